"""Kubernetes objects → upstreams. Pure: plain dicts in the API reference shapes in,
upstreams and rejections out; no client library, no I/O.

A Service opts in with the annotation `dyups-syncer.io/upstream` (or a static
mapping in the config). Its servers come from every EndpointSlice labelled
`kubernetes.io/service-name: <service>`. Conditions follow kube-proxy: ready
endpoints serve; when a service has no ready endpoint at all, its serving
terminating endpoints are used instead (unless that fallback is switched off).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from syncer.model import Directive, ModelError, Server, Upstream, normalize_name
from syncer.sources.services import Rejection

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Options:
    prefix: str = "dyups-syncer.io"
    terminating_fallback: bool = True
    allow_fqdn: bool = False
    # "namespace/service" → (port, upstream name or "" for the default)
    static: Mapping[str, tuple[str, str]] | None = None


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


def key_of(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _int_annotation(annotations: Mapping[str, str], key: str, default: int) -> int:
    raw = annotations.get(key)
    if raw is None:
        return default
    text = str(raw).strip().removesuffix("s") if key.endswith("fail-timeout") else str(raw).strip()
    if not re.fullmatch(r"\d{1,9}", text):
        raise ValueError(f"must be a whole number, got {raw!r}")
    return int(text)


def parse_service(svc: Obj, options: Options) -> ServiceSpec | Rejection | None:
    """The spec a Service opts in with, a Rejection, or None when it does not opt in."""
    key = key_of(svc)
    meta = svc.get("metadata") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    p = options.prefix
    static = (options.static or {}).get(key)
    if f"{p}/upstream" not in annotations and static is None:
        return None
    namespace, name = key.split("/", 1)
    raw_name = annotations.get(f"{p}/upstream", static[1] if static else "")
    if raw_name in ("", "true"):
        raw_name = f"{namespace}-{name}"

    def reject(reason: str, field: str, message: str) -> Rejection:
        return Rejection(key, reason, field, message)

    try:
        upstream = normalize_name(raw_name)
    except ModelError as e:
        return reject("name", f"{p}/upstream", str(e))
    wanted_port = annotations.get(f"{p}/port", static[0] if static else "")
    port_name = _service_port_name(svc, str(wanted_port).strip())
    if isinstance(port_name, Rejection):
        return reject(port_name.reason, f"{p}/port", port_name.message)
    values: dict[str, int] = {}
    for field_, default in (("weight", 1), ("max-fails", 1), ("fail-timeout", 10)):
        try:
            values[field_] = _int_annotation(annotations, f"{p}/{field_}", default)
        except ValueError as e:
            return reject(field_.replace("-", "_"), f"{p}/{field_}", str(e))
    directives: list[Directive] = []
    for text in re.split(r"[;,]", annotations.get(f"{p}/directives", "")):
        if text.strip():
            try:
                directives.append(Directive.parse(text))
            except ModelError as e:
                return reject("directive", f"{p}/directives", str(e))
    return ServiceSpec(
        key=key,
        upstream=upstream,
        port_name=port_name,
        weight=values["weight"],
        max_fails=values["max-fails"],
        fail_timeout=values["fail-timeout"],
        directives=tuple(directives),
    )


def _service_port_name(svc: Obj, wanted: str) -> str | Rejection:
    ports = (svc.get("spec") or {}).get("ports") or []
    if not ports:
        return Rejection(key_of(svc), "port_not_found", "spec.ports", "the Service has no port")
    if not wanted:
        if len(ports) > 1:
            names = [str(p.get("name", "")) for p in ports]
            return Rejection(
                key_of(svc),
                "port_required",
                "port",
                f"the Service has several ports {names}: say which one",
            )
        return str(ports[0].get("name") or "")
    for port in ports:
        if wanted in (str(port.get("name") or ""), str(port.get("port"))):
            return str(port.get("name") or "")
    return Rejection(key_of(svc), "port_not_found", "port", f"the Service has no port {wanted!r}")


@dataclass(frozen=True, slots=True)
class _Endpoint:
    address: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    zone: str
    node: str
    fqdn: bool


def _slice_endpoints(slice_: Obj, port_name: str, allow_fqdn: bool) -> Iterable[_Endpoint]:
    address_type = slice_.get("addressType")
    fqdn = address_type == "FQDN"
    if address_type not in ("IPv4", "IPv6") and not (fqdn and allow_fqdn):
        return
    port = None
    for entry in slice_.get("ports") or []:
        if str(entry.get("name") or "") == port_name and entry.get("port") is not None:
            port = int(entry["port"])
    if port is None:
        return
    for ep in slice_.get("endpoints") or []:
        addresses = ep.get("addresses") or []
        if not addresses:
            continue
        cond = ep.get("conditions") or {}
        # The API reference: a nil `ready` is an unknown state that consumers should
        # read as ready; a nil `serving` follows `ready`; a nil `terminating` is false.
        ready = cond.get("ready") is not False
        serving = cond.get("serving", ready) is not False
        yield _Endpoint(
            # Addresses of one endpoint are fungible: use the first.
            address=str(addresses[0]),
            port=port,
            ready=ready,
            serving=serving,
            terminating=cond.get("terminating") is True,
            zone=str(ep.get("zone") or ""),
            node=str(ep.get("nodeName") or ""),
            fqdn=fqdn,
        )


def servers_for(spec: ServiceSpec, slices: Iterable[Obj], options: Options) -> tuple[Server, ...]:
    """The servers of one service: ready endpoints; if none, serving terminating ones."""
    endpoints = [e for s in slices for e in _slice_endpoints(s, spec.port_name, options.allow_fqdn)]
    chosen = [e for e in endpoints if e.ready and not e.terminating]
    if not chosen and options.terminating_fallback:
        chosen = [e for e in endpoints if e.serving and e.terminating]
    servers: dict[str, Server] = {}
    for e in chosen:
        try:
            server = Server(
                host=e.address,
                port=e.port,
                weight=spec.weight,
                max_fails=spec.max_fails,
                fail_timeout=spec.fail_timeout,
                allow_hostname=e.fqdn,
                zone=e.zone,
                node=e.node,
            )
        except ModelError as err:
            raise _BadEndpoint(f"endpoint {e.address!r}: {err}") from err
        servers.setdefault(server.address, server)  # dual slices may repeat an address
    return tuple(servers.values())


class _BadEndpoint(ValueError):
    pass


def trigger_time(slice_: Obj) -> float | None:
    """The origin time of a slice's last change (kube-proxy's programming-latency start)."""
    annotations = (slice_.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(TRIGGER_TIME)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def service_of(slice_: Obj) -> str | None:
    meta = slice_.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return f"{meta.get('namespace', '')}/{name}" if name else None


def build_upstream(
    spec: ServiceSpec, slices: Iterable[Obj], options: Options
) -> Upstream | Rejection | None:
    """The upstream for a service; None when it has no usable endpoint (the caller
    applies the empty-result policy); a Rejection when its data cannot be used."""
    try:
        servers = servers_for(spec, slices, options)
        if not servers:
            return None
        return Upstream(spec.upstream, servers, spec.directives)
    except _BadEndpoint as e:
        return Rejection(spec.key, "endpoint", "endpoints", str(e))
    except ModelError as e:
        return Rejection(spec.key, "directive", "directives", str(e))
