"""Consul health entries → an upstream. Pure: the JSON shapes of `/v1/health/service/<name>`
in, an upstream (or a rejection) out.

A service opts in with a tag (default `dyups`) or the service meta `dyups-upstream`. Per
instance: address = `Service.Address`, else `Node.Address`; port = `Service.Port`; weight =
meta `dyups-weight`, else Consul's own `Weights.Passing` (or `Weights.Warning` for an
instance in warning state); `dyups-max-fails`, `dyups-fail-timeout`, `dyups-backup`.
Upstream-level values (name, directives, traffic policy) come from the instances' meta;
instances that disagree make the service rejected rather than half-applied.

Traffic policy (docs/traffic.md): the meta `dyups-<key>` for the keys of
`syncer.traffic.POLICY_KEYS` over the configured default; an instance's zone is its
node's meta `zone` (`Options.zone_meta`). With `drain-as-backup`, an instance that is
not in a served state (it went critical, or into maintenance) stays as a draining
server while the service has served ones; the source then asks Consul for every
instance, not only the passing ones (`needs_every_instance`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from syncer.model import (
    DEFAULT_TRAFFIC,
    Directive,
    ModelError,
    Server,
    TrafficPolicy,
    Upstream,
    label_value,
    normalize_name,
)
from syncer.sources.services import Rejection
from syncer.traffic import POLICY_KEYS, PolicyFieldError, policy_from_fields

Entry = Mapping[str, Any]
STATUS_RANK = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 3}


@dataclass(frozen=True, slots=True)
class Options:
    tag: str = "dyups"
    meta_prefix: str = "dyups-"
    # Health states served: ("passing",) or ("passing", "warning").
    statuses: tuple[str, ...] = ("passing",)
    use_consul_weights: bool = True
    # The node meta key holding an instance's zone ("" for none).
    zone_meta: str = "zone"
    # The policy of a service without traffic meta (`traffic:` in the config).
    traffic: TrafficPolicy = DEFAULT_TRAFFIC

    @property
    def passing_only(self) -> bool:
        """Whether the default health query asks Consul for passing instances only."""
        return self.statuses == ("passing",)


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
    if not re.fullmatch(r"[0-9]{1,9}", text):  # ASCII: `\d` matches other scripts
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


def _visible(entries: list[Entry], options: Options) -> list[Entry]:
    """The entries the default query returns: with `passing_only`, Consul filters the
    others out (`?passing`); a query for every instance (drain) sees more, and the
    upstream-level values must not depend on which query ran."""
    if not options.passing_only:
        return entries
    return [e for e in entries if entry_status(e) == "passing"]


def service_policy(
    service: str, entries: Iterable[Entry], options: Options
) -> TrafficPolicy | Rejection:
    """The traffic policy the instances' meta ask for (they must agree), over the default."""
    p = options.meta_prefix
    wanted = [_policy_meta(_meta(e), p) for e in entries]
    for other in wanted[1:]:
        if other != wanted[0]:
            # Presence counts too: a key set to null on one instance, absent on another.
            key = next(
                k
                for k in POLICY_KEYS
                if (k in other, other.get(k)) != (k in wanted[0], wanted[0].get(k))
            )
            return Rejection(
                service,
                "meta_conflict",
                f"{p}{key}",
                f"instances disagree on {p}{key}: "
                f"{_shown(wanted[0].get(key))} and {_shown(other.get(key))}",
            )
    try:
        return policy_from_fields(wanted[0] if wanted else {}, options.traffic)
    except PolicyFieldError as e:
        return Rejection(service, "traffic", f"{p}{e.key}", e.detail)


def _policy_meta(meta: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if not isinstance(meta, Mapping):
        return {}
    return {key: meta[f"{prefix}{key}"] for key in POLICY_KEYS if f"{prefix}{key}" in meta}


def _shown(value: object) -> str:
    if value is None:
        return "(none)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def needs_every_instance(service: str, entries: list[Entry], options: Options) -> bool:
    """Whether the service's health query must return every instance, not only the
    passing ones: with `drain-as-backup` (from the entries the query returned), the
    instances that leave the served states become draining servers."""
    if not options.passing_only:
        return False  # the query is not filtered anyway
    policy = service_policy(service, _visible(entries, options), options)
    return isinstance(policy, TrafficPolicy) and policy.drain_as_backup


def build_upstream(
    service: str, entries: list[Entry], options: Options
) -> Upstream | Rejection | None:
    """The upstream of one service; None when no instance is in a served state (the
    caller applies the empty-result policy)."""
    visible = _visible(entries, options)
    name = upstream_name(service, visible, options)
    if isinstance(name, Rejection):
        return name
    p = options.meta_prefix
    directive_texts = {str(_meta(e).get(f"{p}directives") or "") for e in visible}
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
    policy = service_policy(service, visible, options)
    if isinstance(policy, Rejection):
        return policy
    servers: dict[str, Server] = {}
    leaving: list[Server] = []
    for entry in sorted(entries, key=lambda e: str((e.get("Service") or {}).get("ID", ""))):
        status = entry_status(entry)
        if status not in options.statuses:
            if policy.drain_as_backup:
                leaving += _draining(entry, status, options)
            continue
        try:
            server = _server(entry, status, options)
        except (ValueError, ModelError) as e:
            svc_id = (entry.get("Service") or {}).get("ID", "?")
            return Rejection(service, "instance", f"instance {svc_id}", str(e))
        servers.setdefault(server.address, server)
    if not servers:
        return None  # draining instances alone are no upstream: the empty policy applies
    for server in leaving:  # an address that some instance serves is not draining
        servers.setdefault(server.address, server)
    try:
        return Upstream(name, tuple(servers.values()), tuple(directives), policy)
    except ModelError as e:
        return Rejection(service, "upstream", "servers", str(e))


def _draining(entry: Entry, status: str, options: Options) -> list[Server]:
    """An instance out of the served states, as a draining server; none if its data
    cannot make one (it is not served: it does not reject the service)."""
    try:
        server = _server(entry, status, options)
    except (ValueError, ModelError, TypeError):
        return []
    # Its own `backup` does not matter (the policy makes it backup or drops it), and
    # under ip_hash/random a backup server would make the upstream invalid.
    return [dataclasses.replace(server, backup=False, draining=True)]


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
        zone=_zone(node_meta, options.zone_meta),
        node=label_value(str(node.get("Node", "") or "")),
    )


def _zone(node_meta: object, key: str) -> str:
    """The node's zone: metadata only, so a strange value is dropped, never fatal."""
    value = node_meta.get(key) if key and isinstance(node_meta, Mapping) else None
    return label_value(value) if isinstance(value, str) else ""
