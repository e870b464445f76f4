"""Consul health entries → an upstream. Pure: the JSON shapes of `/v1/health/service/<name>`
in, an upstream (or a rejection) out.

A service opts in with a tag (default `dyups`) or the service meta `dyups-upstream`. Per
instance: address = `Service.Address`, else `Node.Address`; port = `Service.Port`; weight =
meta `dyups-weight`, else Consul's own `Weights.Passing` (or `Weights.Warning` for an
instance in warning state); `dyups-max-fails`, `dyups-fail-timeout`, `dyups-backup`.
Upstream-level values (name, directives) come from the instances' meta; instances that
disagree make the service rejected rather than half-applied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from syncer.model import Directive, ModelError, Server, Upstream, label_value, normalize_name
from syncer.sources.services import Rejection

Entry = Mapping[str, Any]
STATUS_RANK = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 3}


@dataclass(frozen=True, slots=True)
class Options:
    tag: str = "dyups"
    meta_prefix: str = "dyups-"
    # Health states served: ("passing",) or ("passing", "warning").
    statuses: tuple[str, ...] = ("passing",)
    use_consul_weights: bool = True
    zone_meta_key: str = "zone"


def opts_in(name: str, tags: Iterable[str], options: Options) -> bool:
    """From `/v1/catalog/services` (name → tags): tagged services opt in; services that opt
    in by meta only are found by the filtered catalog query."""
    return options.tag in set(tags)


def entry_status(entry: Entry) -> str:
    """The worst status of an entry's checks (node and service), as Consul aggregates it."""
    worst = "passing"
    for check in entry.get("Checks") or []:
        status = str(check.get("Status", "critical"))
        if STATUS_RANK.get(status, 2) > STATUS_RANK[worst]:
            worst = status if status in STATUS_RANK else "critical"
    return worst


def _meta(entry: Entry) -> Mapping[str, str]:
    return (entry.get("Service") or {}).get("Meta") or {}


def _int(meta: Mapping[str, str], key: str, default: int) -> int:
    raw = meta.get(key)
    if raw is None:
        return default
    text = str(raw).strip()
    if key.endswith("fail-timeout"):
        text = text.removesuffix("s")
    if not re.fullmatch(r"\d{1,9}", text):
        raise ValueError(f"must be a whole number, got {raw!r}")
    return int(text)


def upstream_name(service: str, entries: Iterable[Entry], options: Options) -> str | Rejection:
    names = {str(_meta(e).get(f"{options.meta_prefix}upstream") or service) for e in entries}
    if not names:
        names = {service}
    if len(names) > 1:
        return Rejection(
            service,
            "meta_conflict",
            f"{options.meta_prefix}upstream",
            f"instances disagree on the upstream name: {sorted(names)}",
        )
    try:
        return normalize_name(names.pop())
    except ModelError as e:
        return Rejection(service, "name", f"{options.meta_prefix}upstream", str(e))


def build_upstream(
    service: str, entries: list[Entry], options: Options
) -> Upstream | Rejection | None:
    """The upstream of one service; None when no instance is in a served state (the
    caller applies the empty-result policy)."""
    name = upstream_name(service, entries, options)
    if isinstance(name, Rejection):
        return name
    p = options.meta_prefix
    directive_texts = {str(_meta(e).get(f"{p}directives") or "") for e in entries}
    if len(directive_texts) > 1:
        return Rejection(
            service,
            "meta_conflict",
            f"{p}directives",
            f"instances disagree on directives: {sorted(directive_texts)}",
        )
    directives: list[Directive] = []
    for text in re.split(r"[;,]", directive_texts.pop() if directive_texts else ""):
        if text.strip():
            try:
                directives.append(Directive.parse(text))
            except ModelError as e:
                return Rejection(service, "directive", f"{p}directives", str(e))
    servers: dict[str, Server] = {}
    for entry in sorted(entries, key=lambda e: str((e.get("Service") or {}).get("ID", ""))):
        status = entry_status(entry)
        if status not in options.statuses:
            continue
        try:
            server = _server(entry, status, options)
        except (ValueError, ModelError) as e:
            svc_id = (entry.get("Service") or {}).get("ID", "?")
            return Rejection(service, "instance", f"instance {svc_id}", str(e))
        servers.setdefault(server.address, server)
    if not servers:
        return None
    try:
        return Upstream(name, tuple(servers.values()), tuple(directives))
    except ModelError as e:
        return Rejection(service, "upstream", "servers", str(e))


def _server(entry: Entry, status: str, options: Options) -> Server:
    svc = entry.get("Service") or {}
    node = entry.get("Node") or {}
    meta = _meta(entry)
    p = options.meta_prefix
    address = str(svc.get("Address") or node.get("Address") or "")
    port = svc.get("Port")
    if not isinstance(port, int) or isinstance(port, bool):
        raise ValueError(f"port must be an integer, got {port!r}")
    weights = svc.get("Weights") or {}
    consul_weight = weights.get("Warning" if status == "warning" else "Passing")
    default_weight = 1
    if options.use_consul_weights and isinstance(consul_weight, int) and consul_weight >= 1:
        default_weight = consul_weight
    backup = str(meta.get(f"{p}backup", "false")).strip().lower()
    if backup not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{p}backup must be true or false, got {backup!r}")
    node_meta = node.get("Meta") or {}
    return Server(
        host=address,
        port=port,
        weight=_int(meta, f"{p}weight", default_weight),
        max_fails=_int(meta, f"{p}max-fails", 1),
        fail_timeout=_int(meta, f"{p}fail-timeout", 10),
        backup=backup in ("true", "1", "yes"),
        zone=label_value(str(node_meta.get(options.zone_meta_key, "") or "")),
        node=label_value(str(node.get("Node", "") or "")),
    )
