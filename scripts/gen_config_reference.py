#!/usr/bin/env python3
"""Generate docs/configuration.md from the configuration model (syncer/config.py).

    python scripts/gen_config_reference.py            # write docs/configuration.md
    python scripts/gen_config_reference.py --check    # exit 1 if it is out of date
    python scripts/gen_config_reference.py --stdout   # print it

Every field of every model reachable from `Config` gets a row: key, type,
default, constraints and a description. Descriptions come, in this order, from
`Field(description=...)`, from the comment at the end of the field's line in
syncer/config.py, and from FALLBACK below (for fields with neither; adding a
description or a comment in syncer/config.py makes its entry here unnecessary).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import re
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "configuration.md"
sys.path.insert(0, str(ROOT))

from syncer import config as cfg  # noqa: E402

# Descriptions of fields whose line in syncer/config.py has no comment.
FALLBACK: dict[str, str] = {
    "Config.sources": "The sources of upstreams; nothing is planned before every one has been read.",
    "Config.proxies": "The proxies to drive: a static list, discovered pods, or both.",
    "Config.snapshot_path": "Snapshot file (desired state, ownership, what was applied); put it on a volume.",
    "Config.resync_interval": "Full read of every proxy (`/detail`, or `/list` on the head flavour) to repair any drift; each proxy's comes 0-20 % early, drawn each time, so that proxies are not all read at once.",
    "Config.probe_interval": "Cheap `GET /list` on a fresh connection to notice a reload or restart.",
    "Config.debounce": "Coalesce bursts of changes into one plan (`0` allowed).",
    "Config.policy": "`sync` creates, updates and deletes; `upsert-only` never deletes.",
    "Config.max_delete_fraction": "Refuse a plan deleting more than this fraction of the owned upstreams on a proxy (a single deletion is always allowed); SIGUSR1 lets it pass once.",
    "Config.owned_prefix": "Upstream names starting with it are managed even if the syncer did not create them.",
    "Config.adopt": "Names the syncer may manage although it did not create them (e.g. `nginx.conf` upstreams).",
    "Config.allow_empty": "Let a source that returns no upstream at all remove everything it provided.",
    "Config.verify_after_write": "Read each upstream back after a 200 and re-post on mismatch.",
    "Config.listen": "Address of `/metrics`, `/healthz`, `/readyz` and `/state` (`0.0.0.0:9105` in a pod).",
    "Config.log": "Logging.",
    "Config.leader_election": "Leader election on a Lease: only its holder writes to proxies.",
    "LogConfig.level": "Log level.",
    "LogConfig.format": "`auto`: console on a terminal, JSON lines otherwise.",
    "FileSourceConfig.type": "`file`.",
    "FileSourceConfig.path": "The YAML file of upstreams (relative to the configuration file).",
    "FileSourceConfig.name": "Source name in metrics and logs (default `file:<path>`).",
    "FileSourceConfig.poll_interval": "How often the file is checked for changes.",
    "FileSourceConfig.allow_hostnames": "Allow host names as servers (nginx resolves them with blocking DNS in every worker).",
    "KubernetesSourceConfig.type": "`kubernetes`.",
    "KubernetesSourceConfig.name": "Source name in metrics and logs (default `kubernetes`).",
    "KubernetesSourceConfig.annotation_prefix": "Prefix of the Service annotations (`<prefix>/upstream`, `/port`, `/weight`, ...).",
    "KubernetesSourceConfig.terminating_fallback": "With no ready endpoint at all, serve the serving terminating ones (kube-proxy's rule).",
    "KubernetesSourceConfig.allow_fqdn": "Accept FQDN EndpointSlices.",
    "KubernetesSourceConfig.client": "Where the Kubernetes API is.",
    "KubernetesSourceConfig.watch_timeout": "Server-side timeout of each WATCH.",
    "ConsulSourceConfig.type": "`consul`.",
    "ConsulSourceConfig.name": "Source name in metrics and logs (default `consul`).",
    "ConsulSourceConfig.address": "`host:port` of the Consul HTTP API.",
    "ConsulSourceConfig.scheme": "`http` or `https`.",
    "ConsulSourceConfig.datacenter": "Datacenter to query (default: the agent's).",
    "ConsulSourceConfig.meta_prefix": "Prefix of the service meta keys read (`<prefix>upstream`, ...).",
    "ConsulSourceConfig.statuses": "Health statuses that serve.",
    "ConsulSourceConfig.consistency": "Consistency mode of the queries.",
    "ConsulSourceConfig.wait": "Blocking query wait (1s to 10m).",
    "ConsulSourceConfig.connect_timeout": "Connect timeout of each query.",
    "ConsulSourceConfig.tls": "TLS to Consul.",
    "KubernetesClientConfig.kubeconfig": "A kubeconfig file (default: in-cluster).",
    "KubernetesClientConfig.context": "The kubeconfig context.",
    "KubernetesClientConfig.api_url": "A plain API URL (kubectl proxy, tests).",
    "BasicAuth.username": "User name.",
    "BasicAuth.password": "Password (never logged).",
    "TLSConfig.ca_file": "CA bundle to verify the server.",
    "TLSConfig.cert_file": "Client certificate.",
    "TLSConfig.key_file": "Client key.",
    "TLSConfig.insecure_skip_verify": "Do not verify the server certificate.",
    "ProxySettings.headers": "Extra request headers (e.g. for an authenticating proxy in front).",
    "ProxySettings.basic_auth": "HTTP basic authentication.",
    "ProxySettings.tls": "TLS to an `https` interface.",
    "ProxySettings.flavour": "`classic` (Tengine, yzprofile until 2020-03), `head` (yzprofile since 2020-04) or `auto` (detected by `GET /detail`).",
    "ProxySettings.shm_zone_size": "The proxy's `dyups_shm_zone_size`.",
    "ProxySettings.read_msg_timeout": "The proxy's `dyups_read_msg_timeout`.",
    "ProxySettings.write_budget": "Bytes per second of bodies (default `0.8 x zone / (2 x timeout)`).",
    "ProxySettings.nginx_workers": "The proxy's `worker_processes`; sizes the propagation kick.",
    "ProxySettings.kick": "After each batch of writes, `GET /list` on `kick_gets` connections (kept alive while writes go on, a quarter renewed per kick) so every worker applies it now.",
    "ProxySettings.kick_gets": "How many kick GETs (default derived from `nginx_workers`).",
    "ProxySettings.connect_timeout": "Per request.",
    "ProxySettings.read_timeout": "Per request.",
    "ProxyConfig.url": "`http(s)://host:port[/prefix]` of the dyups interface.",
    "ProxyConfig.name": "Label in metrics, logs and the snapshot (default `host:port`).",
    "KubernetesProxiesConfig.namespace": "The proxies' namespace.",
    "KubernetesProxiesConfig.label_selector": "Selects the proxy pods.",
    "KubernetesProxiesConfig.scheme": "`http` or `https`.",
    "KubernetesProxiesConfig.client": "Where the Kubernetes API is.",
    "ProxiesConfig.static": "Fixed proxies.",
    "ProxiesConfig.kubernetes": "Proxies discovered as Kubernetes pods.",
    "LeaderElectionConfig.enabled": "Turn leader election on.",
    "LeaderElectionConfig.backend": "`kubernetes`: a `coordination.k8s.io/v1` Lease; `consul`: a Consul session lock on a KV key.",
    "LeaderElectionConfig.consul": "The Consul lock (backend `consul`).",
    "ConsulLockConfig.key": "The KV key locked by the leader's session.",
    "ConsulLockConfig.client": "Where the Consul agent is.",
    "ConsulClientConfig.address": "`host:port` of the Consul HTTP API.",
    "ConsulClientConfig.scheme": "`http` or `https`.",
    "ConsulClientConfig.datacenter": "Datacenter to query (default: the agent's).",
    "ConsulClientConfig.tls": "TLS to Consul.",
    "ConsulClientConfig.connect_timeout": "Connect timeout of each query.",
    "ConsulProxiesConfig.service": "The Consul service of the proxies.",
    "ConsulProxiesConfig.tag": "Only its instances with this tag.",
    "ConsulProxiesConfig.scheme": "`http` or `https`.",
    "ConsulProxiesConfig.client": "Where the Consul agent is.",
    "ConsulProxiesConfig.wait": "Blocking query wait.",
    "ProxiesConfig.consul": "Proxies discovered as the passing instances of a Consul service.",
    "LeaderElectionConfig.lease_name": "The `coordination.k8s.io/v1` Lease.",
    "LeaderElectionConfig.namespace": "The Lease's namespace.",
    "LeaderElectionConfig.lease_duration": "How long a lease lasts without renewal before another replica takes it.",
    "LeaderElectionConfig.renew_deadline": "A leader that cannot renew within it stops writing at once.",
    "LeaderElectionConfig.retry_period": "How often candidates and the leader try.",
    "LeaderElectionConfig.shards": "Split the proxies across the replicas (backend `kubernetes`): one Lease per shard, `<lease_name>-<i>`, each proxy in one shard by rendezvous hashing of its name; the replicas share the shards evenly (README: Sharding). `1`: one Lease, its holder writes every proxy.",
    "LeaderElectionConfig.client": "Where the Kubernetes API is.",
}

# Defaults computed at run time, which the model cannot show.
DYNAMIC_DEFAULTS: dict[str, str] = {
    "LeaderElectionConfig.namespace": "`$POD_NAMESPACE`, else `default`",
}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds (through Optional, list, dict, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _sections() -> list[tuple[str, str, type[BaseModel]]]:
    """(heading, key prefix, model) for every model reachable from Config, breadth first.

    A model used at one place is headed by its key path; one used at several places
    (TLS, the API clients) gets one section, headed by its key name with a `…` prefix.
    """
    places: dict[type[BaseModel], list[str]] = {}
    order: list[type[BaseModel]] = []

    def visit(model: type[BaseModel], path: str) -> None:  # depth first, in field order
        if model not in places:
            order.append(model)
        places.setdefault(model, []).append(path)
        for name, info in model.model_fields.items():
            is_list = get_origin(info.annotation) is list
            for sub in _models_in(info.annotation):
                visit(sub, f"{path}.{name}".lstrip(".") + ("[]" if is_list else ""))

    visit(cfg.Config, "")
    sections = []
    for model in order:
        paths = places[model]
        kind = model.model_fields.get("type")
        if model is cfg.Config:
            sections.append(("Top level", "", model))
        elif kind is not None and get_origin(kind.annotation) is Literal:
            (value,) = get_args(kind.annotation)
            sections.append((f"`{paths[0]}`, `type: {value}`", paths[0], model))
        elif len(set(paths)) == 1:
            sections.append((f"`{paths[0]}`", paths[0], model))
        else:
            name = paths[0].rsplit(".", 1)[-1]
            shared = [m for m in order if len(set(places[m])) > 1 and places[m][0].endswith(name)]
            heading = f"`{name}` ({_title(model)})" if len(shared) > 1 else f"`{name}`"
            sections.append((heading, f"…{name}", model))
            WHERE[model] = ", ".join(f"`{p}`" for p in sorted(set(paths)))
    return sections


def _title(model: type[BaseModel]) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", model.__name__.removesuffix("Config")).lower()


WHERE: dict[type[BaseModel], str] = {}
SECTIONS = _sections()
ANCHORS = {model: heading for heading, _, model in SECTIONS}


def _line_comments() -> dict[str, str]:
    """`Class.field` → the comment at the end of its line in syncer/config.py."""
    source = inspect.getsource(cfg)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                text = comments.get(item.lineno) or comments.get(item.end_lineno or item.lineno)
                if text:
                    out[f"{node.name}.{item.target.id}"] = text
                    continue
                above = item.lineno - 1
                if above in comments and source.splitlines()[above - 1].strip().startswith("#"):
                    # A comment line just above: weaker (it may be about several fields).
                    out[f"{node.name}.{item.target.id}^"] = comments[above]
    return out


def _anchor(heading: str) -> str:
    slug = "".join(c for c in heading.lower() if c.isalnum() or c in " -_").strip()
    return slug.replace(" ", "-")


def _type(annotation: Any, metadata: list[Any]) -> str:
    validators = [getattr(m, "func", None) for m in metadata]
    if cfg._duration in validators:
        return "duration"
    if cfg._size in validators:
        return "size"
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = get_args(annotation)
        more = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return _type(inner, more)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        text = " \\| ".join(_type(a, []) for a in args)
        return text + " or null" if len(args) < len(get_args(annotation)) else text
    if origin is list:
        (item,) = get_args(annotation)
        return f"list of {_type(item, [])}"
    if origin is dict:
        key, value = get_args(annotation)
        return f"mapping {_type(key, [])} → {_type(value, [])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        heading = ANCHORS.get(annotation)
        return f"[object](#{_anchor(heading)})" if heading else "object"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    if annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _constraints(info: FieldInfo) -> str:
    parts = []
    for m in info.metadata:
        for attr, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if getattr(m, attr, None) is not None:
                parts.append(f"{sym} {getattr(m, attr)}")
        if getattr(m, "min_length", None):
            parts.append(f"at least {m.min_length}")
    return ", ".join(parts)


def _seconds(value: float) -> str:
    if value == 0:
        return "0"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if value >= size and (value / size).is_integer():
            return f"{int(value / size)}{unit}"
    return f"{round(value * 1000)}ms" if value < 1 else f"{value}s"


def _default(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    key = f"{model.__name__}.{name}"
    if key in DYNAMIC_DEFAULTS:
        return DYNAMIC_DEFAULTS[key]
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    validators = [getattr(m, "func", None) for m in info.metadata]
    if cfg._duration in validators and value is not None:
        return f"`{_seconds(float(value))}`"
    if cfg._size in validators and isinstance(value, int):
        for unit, size in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
            if value % size == 0:
                return f"`{value // size}{unit}`"
    if isinstance(value, BaseModel):
        return "`{}`" if not value.model_dump(exclude_defaults=True) else f"`{value}`"
    if value is None:
        return "none"
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | dict):
        return f"`{value!r}`".replace("'", "")
    return f"`{value}`"


def _description(
    model: type[BaseModel], name: str, info: FieldInfo, comments: dict[str, str]
) -> str:
    if info.description:
        return info.description
    for suffix in ("", "^"):  # the line's own comment, FALLBACK, then a comment above
        for klass in model.__mro__:
            key = f"{klass.__name__}.{name}"
            if key + suffix in comments:
                text = comments[key + suffix]
                return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
            if not suffix and key in FALLBACK:
                return FALLBACK[key]
    return ""


def render() -> str:
    comments = _line_comments()
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_config_reference.py from syncer/config.py: do not edit by hand. -->",
        "",
        "One YAML file, checked with `dyups-syncer check-config -c FILE`. Unknown keys are errors.",
        "Every key can be overridden from the environment: `DYUPS_SYNCER_` + the path in upper",
        "case with `__` between levels (`DYUPS_SYNCER_LOG__LEVEL=debug`,",
        "`DYUPS_SYNCER_PROXIES__STATIC__0__BASIC_AUTH__PASSWORD=…`); lists and mappings as YAML.",
        "A *duration* is `100ms`, `10s`, `5m`, `1h` or a number of seconds; a *size* is `512k`,",
        "`2m`, `1g` or a number of bytes. Relative paths are relative to the configuration file.",
        "",
    ]
    for heading, prefix, model in SECTIONS:
        out += [f"## {heading}", ""]
        doc = inspect.cleandoc(model.__doc__ or "") if model.__doc__ else ""
        if doc and not doc.startswith(model.__name__ + "("):
            out += [" ".join(doc.split()), ""]
        if model in WHERE:
            out += [f"Used at {WHERE[model]}.", ""]
        fields = model.model_fields
        if issubclass(model, cfg.ProxySettings) and model is not cfg.ProxyConfig:
            # Discovery: its own keys; the per-proxy settings are documented once.
            out += [
                "Also takes every per-proxy setting of [`proxies.static[]`](#proxiesstatic) but `url`"
                " and `name`, applied to every discovered proxy.",
                "",
            ]
            fields = {k: v for k, v in fields.items() if k not in cfg.ProxySettings.model_fields}
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, info in fields.items():
            key = f"{prefix}.{name}" if prefix else name
            type_text = _type(info.annotation, list(info.metadata))
            constraints = _constraints(info)
            if constraints:
                type_text += f" ({constraints})"
            desc = _description(model, name, info, comments).replace("|", "\\|") or "—"
            out.append(f"| `{key}` | {type_text} | {_default(model, name, info)} | {desc} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if docs/configuration.md is stale"
    )
    parser.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = parser.parse_args()
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(
                f"{OUTPUT.relative_to(ROOT)} is out of date: run python scripts/gen_config_reference.py",
                file=sys.stderr,
            )
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
