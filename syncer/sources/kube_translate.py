"""Kubernetes objects → upstreams. Pure: plain dicts in the API reference shapes in,
upstreams and rejections out; no client library, no I/O.

A Service opts in with the annotation `dyups-syncer.io/upstream` (or a static
mapping in the config). Its servers come from every EndpointSlice labelled
`kubernetes.io/service-name: <service>`. Conditions follow kube-proxy: ready
endpoints serve; when a service has no ready endpoint at all, its serving
terminating endpoints are used instead (unless that fallback is switched off).

Traffic policy (docs/traffic.md): the annotations `dyups-syncer.io/<key>` for the
keys of `syncer.traffic.POLICY_KEYS` over the configured default. Endpoints carry
their `zone`, `nodeName` and `hints.forZones`; with `drain-as-backup`, serving
terminating endpoints of a service that has ready ones are kept as draining
servers (the policy keeps them as backup for `drain-seconds`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

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

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
Obj = Mapping[str, Any]
# The rejection reason of an object whose fields do not have the types of the API
# reference (an aggregated API, a client or server bug): rejected, never an exception.
MALFORMED = "malformed"
_COUNT_RE = re.compile(r"[0-9]{1,9}")  # ASCII only: `\d` matches other scripts' digits


@dataclass(frozen=True, slots=True)
class Options:
    prefix: str = "dyups-syncer.io"
    terminating_fallback: bool = True
    allow_fqdn: bool = False
    # "namespace/service" → (port, upstream name or "" for the default)
    static: Mapping[str, tuple[str, str]] | None = None
    # The policy of a Service without traffic annotations (`traffic:` in the config).
    traffic: TrafficPolicy = DEFAULT_TRAFFIC


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What a Service asks for, parsed from its annotations."""

    key: str
    upstream: str
    port_name: str  # the Service port's name ("" for an unnamed single port)
    weight: int
    max_fails: int
    fail_timeout: int
    directives: tuple[Directive, ...]
    traffic: TrafficPolicy = DEFAULT_TRAFFIC


class _Malformed(Exception):
    """A field without the type the API reference gives it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _show(value: object) -> str:
    """A value for a message, bounded: hostile objects can be large."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4,300 digits, maybe inside a list
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _mapping(value: object, field: str) -> Mapping[str, Any]:
    """A mapping field; absent (None) reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Malformed(field, f"must be a mapping, got {_show(value)}")
    return value


def _list(value: object, field: str) -> list[Any]:
    """A list field; absent (None) reads as empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed(field, f"must be a list, got {_show(value)}")
    return value


def _str(value: object, field: str) -> str:
    """A string field; absent (None) reads as ""."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Malformed(field, f"must be a string, got {_show(value)}")
    return value


def _flag(value: object, field: str) -> bool | None:
    """A condition: true, false or absent (None)."""
    if value is not None and not isinstance(value, bool):
        raise _Malformed(field, f"must be true or false, got {_show(value)}")
    return value


def _port_number(value: object, field: str) -> int | None:
    """A port number field (an int32 in the API); absent (None) reads as None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise _Malformed(field, f"must be a 32-bit integer, got {_show(value)}")
    return value


def _label(value: object) -> str:
    """`zone` and `nodeName`: metadata only, so a strange value is dropped rather
    than rejecting the endpoint it describes."""
    return _known_label(value) if isinstance(value, str) else ""


@functools.lru_cache(maxsize=4096)  # a few zones and nodes, on every endpoint of every event
def _known_label(value: str) -> str:
    return label_value(value)


def _for_zones(hints: object) -> tuple[str, ...]:
    """`hints.forZones[].name`, metadata like `zone`: what is not a zone name is dropped."""
    if hints is None:
        return ()
    entries = hints.get("forZones") if isinstance(hints, Mapping) else None
    if not isinstance(entries, list):
        return ()
    names = (_label(e.get("name")) if isinstance(e, Mapping) else "" for e in entries)
    return tuple(dict.fromkeys(name for name in names if name))


def key_of(obj: Obj) -> str:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        meta = {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _int_annotation(annotations: Mapping[str, Any], key: str, default: int) -> int:
    raw = annotations.get(key)
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise _Malformed(key, f"must be a string, got {_show(raw)}")
    text = raw.strip().removesuffix("s") if key.endswith("fail-timeout") else raw.strip()
    if not _COUNT_RE.fullmatch(text):
        raise ValueError(f"must be a whole number, got {_show(raw)}")
    return int(text)


def parse_service(svc: Obj, options: Options) -> ServiceSpec | Rejection | None:
    """The spec a Service opts in with, a Rejection, or None when it does not opt in."""
    key = key_of(svc)
    p = options.prefix
    static = (options.static or {}).get(key)
    if f"{p}/upstream" not in _annotations(svc) and static is None:
        return None
    try:
        return _parse_service(key, svc, options, static)
    except _Malformed as e:
        return Rejection(key, MALFORMED, e.field, e.message)


def _parse_service(
    key: str, svc: Obj, options: Options, static: tuple[str, str] | None
) -> ServiceSpec | Rejection:
    meta = _mapping(svc.get("metadata"), "metadata")
    annotations = _mapping(meta.get("annotations"), "metadata.annotations")
    for part in ("namespace", "name"):
        if not isinstance(meta.get(part), str) or not meta[part]:
            raise _Malformed(f"metadata.{part}", f"must be a string, got {_show(meta.get(part))}")
    namespace, name = meta["namespace"], meta["name"]
    p = options.prefix

    def reject(reason: str, field: str, message: str) -> Rejection:
        return Rejection(key, reason, field, message)

    def annotation(field: str, default: str) -> str:
        value = annotations.get(f"{p}/{field}", default)
        if not isinstance(value, str):
            raise _Malformed(f"{p}/{field}", f"must be a string, got {_show(value)}")
        return value

    raw_name = annotation("upstream", static[1] if static else "")
    if raw_name in ("", "true"):
        raw_name = f"{namespace}-{name}"
    try:
        upstream = normalize_name(raw_name)
    except ModelError as e:
        return reject("name", f"{p}/upstream", str(e))
    port_name = _service_port_name(svc, annotation("port", static[0] if static else "").strip())
    if isinstance(port_name, Rejection):
        return reject(port_name.reason, f"{p}/port", port_name.message)
    values: dict[str, int] = {}
    for field_, default in (("weight", 1), ("max-fails", 1), ("fail-timeout", 10)):
        try:
            values[field_] = _int_annotation(annotations, f"{p}/{field_}", default)
        except ValueError as e:
            return reject(field_.replace("-", "_"), f"{p}/{field_}", str(e))
    directives: list[Directive] = []
    for text in re.split(r"[;,]", annotation("directives", "")):
        if text.strip():
            try:
                directives.append(Directive.parse(text))
            except ModelError as e:
                return reject("directive", f"{p}/directives", str(e))
    fields = {key: annotation(key, "") for key in POLICY_KEYS if f"{p}/{key}" in annotations}
    try:
        traffic = policy_from_fields(fields, options.traffic)
    except PolicyFieldError as e:
        return reject("traffic", f"{p}/{e.key}", e.detail)
    return ServiceSpec(
        key=key,
        upstream=upstream,
        port_name=port_name,
        weight=values["weight"],
        max_fails=values["max-fails"],
        fail_timeout=values["fail-timeout"],
        directives=tuple(directives),
        traffic=traffic,
    )


def _service_ports(svc: Obj) -> list[tuple[str, int | None]]:
    """(name, port) of every Service port; a malformed entry raises _Malformed."""
    spec = _mapping(svc.get("spec"), "spec")
    out = []
    for i, entry in enumerate(_list(spec.get("ports"), "spec.ports")):
        if not isinstance(entry, Mapping):
            raise _Malformed(f"spec.ports.{i}", f"must be a mapping, got {_show(entry)}")
        name = _str(entry.get("name"), f"spec.ports.{i}.name")
        out.append((name, _port_number(entry.get("port"), f"spec.ports.{i}.port")))
    return out


def _service_port_name(svc: Obj, wanted: str) -> str | Rejection:
    ports = _service_ports(svc)
    if not ports:
        return Rejection(key_of(svc), "port_not_found", "spec.ports", "the Service has no port")
    if not wanted:
        if len(ports) > 1:
            names = [name for name, _ in ports]
            return Rejection(
                key_of(svc),
                "port_required",
                "port",
                f"the Service has several ports {names}: say which one",
            )
        return ports[0][0]
    for name, number in ports:
        if wanted in (name, str(number)):
            return name
    return Rejection(
        key_of(svc), "port_not_found", "port", f"the Service has no port {_show(wanted)}"
    )


class _Endpoint(NamedTuple):  # a tuple: built for every endpoint on every slice event
    address: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    zone: str
    node: str
    for_zones: tuple[str, ...]
    fqdn: bool


def _slice_endpoints(slice_: Obj, port_name: str, allow_fqdn: bool) -> Iterable[_Endpoint]:
    """The endpoints of one slice for the port `port_name`; a field of the wrong type
    raises _Malformed (its field names the slice)."""
    if not isinstance(slice_, Mapping):
        raise _Malformed("EndpointSlice", f"must be a mapping, got {_show(slice_)}")
    where = f"EndpointSlice {key_of(slice_)}"
    address_type = slice_.get("addressType")
    fqdn = address_type == "FQDN"
    if address_type not in ("IPv4", "IPv6") and not (fqdn and allow_fqdn):
        return []
    port = None
    for i, entry in enumerate(_list(slice_.get("ports"), f"{where}: ports")):
        if not isinstance(entry, Mapping):
            raise _Malformed(f"{where}: ports.{i}", f"must be a mapping, got {_show(entry)}")
        name = _str(entry.get("name"), f"{where}: ports.{i}.name")
        number = _port_number(entry.get("port"), f"{where}: ports.{i}.port")
        if name == port_name and number is not None:
            port = number
    if port is None:
        return []
    out = []
    for i, ep in enumerate(_list(slice_.get("endpoints"), f"{where}: endpoints")):
        # `type(...) is dict` first: JSON gives dicts, and an ABC check per field of
        # every endpoint of every event was a good part of its cost.
        if type(ep) is not dict and not isinstance(ep, Mapping):
            raise _Malformed(f"{where}: endpoints.{i}", f"must be a mapping, got {_show(ep)}")
        addresses, cond = ep.get("addresses"), ep.get("conditions")
        if type(addresses) is not list or not (
            cond is None or type(cond) is dict or isinstance(cond, Mapping)
        ):
            at = f"{where}: endpoints.{i}"  # the checks below raise, naming the field
            addresses = _list(addresses, f"{at}.addresses")
            cond = _mapping(cond, f"{at}.conditions")
        if not addresses:
            continue
        cond = cond or {}
        address = addresses[0]  # addresses of one endpoint are fungible: use the first
        ready, serving, terminating = (
            cond.get("ready"),
            cond.get("serving"),
            cond.get("terminating"),
        )
        if not (
            type(address) is str and _is_flag(ready) and _is_flag(serving) and _is_flag(terminating)
        ):
            # Field names are built only here, when a check is about to fail: formatting
            # them for every field of every endpoint was a good part of a slice event's cost.
            at = f"{where}: endpoints.{i}"
            address = _str(address, f"{at}.addresses.0")
            ready = _flag(ready, f"{at}.conditions.ready")
            serving = _flag(serving, f"{at}.conditions.serving")
            terminating = _flag(terminating, f"{at}.conditions.terminating")
        # The API reference: a nil `ready` is an unknown state that consumers should
        # read as ready; a nil `serving` follows `ready`; a nil `terminating` is false.
        is_ready = ready is not False
        out.append(
            _Endpoint(
                address=address,
                port=port,
                ready=is_ready,
                serving=is_ready if serving is None else serving,
                terminating=terminating is True,
                zone=_label(ep.get("zone")),
                node=_label(ep.get("nodeName")),
                for_zones=_for_zones(ep.get("hints")),
                fqdn=fqdn,
            )
        )
    return out


def _is_flag(value: object) -> bool:
    """What `_flag` accepts: true, false or absent (identity: 1 == True)."""
    return value is None or value is True or value is False


def servers_for(
    spec: ServiceSpec,
    slices: Iterable[Obj],
    options: Options,
    previous: Upstream | None = None,
) -> tuple[Server, ...]:
    """The servers of one service: ready endpoints; if none, serving terminating ones.
    With `drain_as_backup`, a service that has ready endpoints also keeps its serving
    terminating ones, as draining servers.
    Raises _Malformed or _BadEndpoint (`build_upstream` turns them into Rejections)."""
    endpoints = [e for s in slices for e in _slice_endpoints(s, spec.port_name, options.allow_fqdn)]
    known = {s.address: s for s in previous.servers} if previous is not None else {}
    chosen = [e for e in endpoints if e.ready and not e.terminating]
    draining: list[_Endpoint] = []
    if chosen and spec.traffic.drain_as_backup:
        draining = [e for e in endpoints if e.serving and e.terminating]
    elif not chosen and options.terminating_fallback:
        chosen = [e for e in endpoints if e.serving and e.terminating]
    servers: dict[str, Server] = {}
    # Ready ones first: an address listed twice (dual slices) is draining only if it
    # is nowhere ready.
    for e, is_draining in [*((e, False) for e in chosen), *((e, True) for e in draining)]:
        try:
            server = _server(e, spec, is_draining, known)
        except ModelError as err:
            raise _BadEndpoint(f"endpoint {_show(e.address)}: {err}") from err
        servers.setdefault(server.address, server)  # dual slices may repeat an address
    return tuple(servers.values())


def _server(
    e: _Endpoint, spec: ServiceSpec, draining: bool, previous: Mapping[str, Server]
) -> Server:
    """One endpoint's Server, the service's current one when nothing in it changed:
    every event on a slice rebuilds its service's servers, and building and
    validating each one again was a quarter of the syncer's CPU in a rolling
    restart. Servers are immutable, so sharing them is safe. A raw address that is
    not in canonical form simply misses and is built (and checked) anew."""
    host = f"[{e.address}]" if ":" in e.address else e.address
    old = previous.get(f"{host}:{e.port}")
    if (
        old is not None
        and old.weight == spec.weight
        and old.max_fails == spec.max_fails
        and old.fail_timeout == spec.fail_timeout
        and old.allow_hostname == e.fqdn
        and old.zone == e.zone
        and old.node == e.node
        and old.for_zones == e.for_zones
        and old.draining == draining
        and not old.backup
        and not old.down
        and not old.max_conns
    ):
        return old
    return Server(
        host=e.address,
        port=e.port,
        weight=spec.weight,
        max_fails=spec.max_fails,
        fail_timeout=spec.fail_timeout,
        allow_hostname=e.fqdn,
        zone=e.zone,
        node=e.node,
        for_zones=e.for_zones,
        draining=draining,
    )


class _BadEndpoint(ValueError):
    pass


def _annotations(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def trigger_time(slice_: Obj) -> float | None:
    """The origin time of a slice's last change (kube-proxy's programming-latency start)."""
    raw = _annotations(slice_).get(TRIGGER_TIME)
    if not raw or not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def service_of(slice_: Obj) -> str | None:
    meta = slice_.get("metadata") if isinstance(slice_, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    labels = meta.get("labels")
    name = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
    if not isinstance(name, str) or not name:
        return None
    return f"{meta.get('namespace', '')}/{name}"


def build_upstream(
    spec: ServiceSpec,
    slices: Iterable[Obj],
    options: Options,
    previous: Upstream | None = None,
) -> Upstream | Rejection | None:
    """The upstream for a service; None when it has no usable endpoint (the caller
    applies the empty-result policy); a Rejection when its data cannot be used.
    `previous`: the service's current upstream, whose unchanged servers are reused."""
    try:
        servers = servers_for(spec, slices, options, previous)
        if not servers:
            return None
        return Upstream(spec.upstream, servers, spec.directives, spec.traffic)
    except _Malformed as e:
        return Rejection(spec.key, MALFORMED, e.field, e.message)
    except _BadEndpoint as e:
        return Rejection(spec.key, "endpoint", "endpoints", str(e))
    except ModelError as e:
        return Rejection(spec.key, "directive", "directives", str(e))
