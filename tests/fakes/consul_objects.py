"""Builders for the JSON shapes of Consul's catalog and health HTTP API, for tests.

The shapes follow https://developer.hashicorp.com/consul/api-docs/health ("List Service
Instances for Service") and https://developer.hashicorp.com/consul/api-docs/catalog
("List Services", "List Nodes for Service"), with the fields a real agent (1.1x) also
sends that the doc samples leave out: `CreateIndex`/`ModifyIndex` on nodes, services and
checks, `Weights`, `EnableTagOverride`, the check's `Type`/`Interval`/`Timeout`/
`Definition`. `Namespace`/`Partition` appear only when `enterprise` is true (Consul CE
has no such fields on the wire).

Services registered through an agent without tags or meta come back from a real agent as
`"Tags": []` and `"Meta": {}` in recent versions but as `null` in older ones (Go nil
slices/maps); `nil_for_empty=True` produces the `null` form so that a consumer can be
tested against both.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

JSON = dict[str, Any]

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
STATUSES = (PASSING, WARNING, CRITICAL)
SERF_CHECK_ID = "serfHealth"

_NODE_NS = uuid.UUID("6f1b6a1e-2c6b-4f63-9f3a-0c0a5e1d7c11")


def node_id(name: str, datacenter: str = "dc1") -> str:
    """A stable node ID (agents generate a random UUID once and keep it)."""
    return str(uuid.uuid5(_NODE_NS, f"{datacenter}/{name}"))


def _list_or_nil(items: Iterable[str], nil_for_empty: bool) -> list[str] | None:
    out = list(items)
    return None if (nil_for_empty and not out) else out


def _map_or_nil(items: Mapping[str, str] | None, nil_for_empty: bool) -> dict[str, str] | None:
    out = dict(items or {})
    return None if (nil_for_empty and not out) else out


def _enterprise(out: JSON, namespace: str | None, partition: str | None) -> JSON:
    if namespace is not None:
        out["Namespace"] = namespace
    if partition is not None:
        out["Partition"] = partition
    return out


def node_tagged_addresses(address: str) -> dict[str, str]:
    """What an agent reports for its node: lan/wan plus the per-family variants."""
    out = {"lan": address, "wan": address}
    family = _family(address)
    if family:
        out[f"lan_{family}"] = address
        out[f"wan_{family}"] = address
    return out


def _family(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return "ipv4" if ip.version == 4 else "ipv6"


def node(
    name: str,
    address: str,
    *,
    datacenter: str = "dc1",
    id: str | None = None,
    tagged_addresses: Mapping[str, str] | None = None,
    meta: Mapping[str, str] | None = None,
    create_index: int = 1,
    modify_index: int | None = None,
    partition: str | None = None,
) -> JSON:
    """The `Node` object of a health entry (structs.Node)."""
    out: JSON = {
        "ID": id if id is not None else node_id(name, datacenter),
        "Node": name,
        "Address": address,
        "Datacenter": datacenter,
        "TaggedAddresses": dict(tagged_addresses)
        if tagged_addresses is not None
        else node_tagged_addresses(address),
        "Meta": dict(meta) if meta is not None else {"consul-network-segment": ""},
    }
    _enterprise(out, None, partition)
    out["CreateIndex"] = create_index
    out["ModifyIndex"] = modify_index if modify_index is not None else create_index
    return out


def service_tagged_addresses(address: str, port: int) -> dict[str, JSON]:
    """What an agent adds for a service registered with an IP `Address`."""
    family = _family(address)
    if not family:
        return {}
    entry = {"Address": address, "Port": port}
    return {f"lan_{family}": dict(entry), f"wan_{family}": dict(entry)}


def service(
    name: str,
    *,
    id: str | None = None,
    tags: Iterable[str] = (),
    address: str = "",
    port: int = 0,
    meta: Mapping[str, str] | None = None,
    weights: Mapping[str, int] | None = None,
    tagged_addresses: Mapping[str, Any] | None = None,
    create_index: int = 1,
    modify_index: int | None = None,
    namespace: str | None = None,
    partition: str | None = None,
    nil_for_empty: bool = False,
) -> JSON:
    """The `Service` object of a health entry (structs.NodeService). `Address` is "" when
    the service was registered without one: consumers must fall back to the node's."""
    out: JSON = {
        "ID": id if id is not None else name,
        "Service": name,
        "Tags": _list_or_nil(tags, nil_for_empty),
        "Address": address,
    }
    tagged = (
        dict(tagged_addresses)
        if tagged_addresses is not None
        else service_tagged_addresses(address, port)
        if address
        else {}
    )
    if tagged:  # `json:",omitempty"`
        out["TaggedAddresses"] = tagged
    out["Meta"] = _map_or_nil(meta, nil_for_empty)
    out["Port"] = port
    out["Weights"] = dict(weights) if weights is not None else {"Passing": 1, "Warning": 1}
    out["EnableTagOverride"] = False
    out["Proxy"] = {"Mode": "", "MeshGateway": {}, "Expose": {}}
    out["Connect"] = {}
    out["PeerName"] = ""
    _enterprise(out, namespace, partition)
    out["CreateIndex"] = create_index
    out["ModifyIndex"] = modify_index if modify_index is not None else create_index
    return out


def check(
    node_name: str,
    check_id: str,
    name: str,
    status: str = PASSING,
    *,
    service_id: str = "",
    service_name: str = "",
    service_tags: Iterable[str] = (),
    output: str = "",
    notes: str = "",
    type: str = "",
    create_index: int = 1,
    modify_index: int | None = None,
    namespace: str | None = None,
    partition: str | None = None,
    nil_for_empty: bool = False,
) -> JSON:
    """One entry of `Checks` (structs.HealthCheck)."""
    if status not in STATUSES:
        raise ValueError(f"check status must be one of {STATUSES}, not {status!r}")
    out: JSON = {
        "Node": node_name,
        "CheckID": check_id,
        "Name": name,
        "Status": status,
        "Notes": notes,
        "Output": output,
        "ServiceID": service_id,
        "ServiceName": service_name,
        "ServiceTags": _list_or_nil(service_tags, nil_for_empty),
        "Type": type,
        "Interval": "",
        "Timeout": "",
        "ExposedPort": 0,
        "Definition": {},
    }
    _enterprise(out, namespace, partition)
    out["CreateIndex"] = create_index
    out["ModifyIndex"] = modify_index if modify_index is not None else create_index
    return out


def serf_check(node_name: str, status: str = PASSING, **kwargs: Any) -> JSON:
    """The node-level `serfHealth` check every agent node has."""
    output = "Agent alive and reachable" if status == PASSING else "Agent not live or unreachable"
    kwargs.setdefault("output", output)
    return check(node_name, SERF_CHECK_ID, "Serf Health Status", status, **kwargs)


def service_check(
    node_name: str,
    service_id: str,
    service_name: str,
    status: str = PASSING,
    **kwargs: Any,
) -> JSON:
    """The check an agent creates for a service registered with one `Check` (its ID is
    `service:<service id>`)."""
    kwargs.setdefault("type", "ttl")
    return check(
        node_name,
        f"service:{service_id}",
        f"Service '{service_name}' check",
        status,
        service_id=service_id,
        service_name=service_name,
        **kwargs,
    )


def health_entry(node_json: JSON, service_json: JSON, checks: Iterable[JSON]) -> JSON:
    """One element of `GET /v1/health/service/:service` (structs.CheckServiceNode)."""
    return {"Node": node_json, "Service": service_json, "Checks": list(checks)}


def catalog_service_node(node_json: JSON, service_json: JSON) -> JSON:
    """One element of `GET /v1/catalog/service/:service` (structs.ServiceNode): the node
    and the service flattened, service fields prefixed with `Service`."""
    out: JSON = {
        "ID": node_json["ID"],
        "Node": node_json["Node"],
        "Address": node_json["Address"],
        "Datacenter": node_json["Datacenter"],
        "TaggedAddresses": node_json["TaggedAddresses"],
        "NodeMeta": node_json["Meta"],
        "ServiceKind": "",
        "ServiceID": service_json["ID"],
        "ServiceName": service_json["Service"],
        "ServiceTags": service_json["Tags"],
        "ServiceAddress": service_json["Address"],
        "ServiceWeights": service_json["Weights"],
        "ServiceMeta": service_json["Meta"],
        "ServicePort": service_json["Port"],
        "ServiceEnableTagOverride": service_json["EnableTagOverride"],
        "ServiceProxy": service_json["Proxy"],
        "ServiceConnect": service_json["Connect"],
    }
    if "TaggedAddresses" in service_json:
        out["ServiceTaggedAddresses"] = service_json["TaggedAddresses"]
    for key in ("Namespace", "Partition"):
        if key in service_json:
            out[key] = service_json[key]
    out["CreateIndex"] = service_json["CreateIndex"]
    out["ModifyIndex"] = service_json["ModifyIndex"]
    return out


def services_map(entries: Iterable[tuple[str, Iterable[str]]]) -> dict[str, list[str]]:
    """`GET /v1/catalog/services`: service name → every tag any instance carries (sorted
    here; Consul builds it from a Go map, so the order is not defined)."""
    out: dict[str, set[str]] = {}
    for name, tags in entries:
        out.setdefault(name, set()).update(tags)
    return {name: sorted(tags) for name, tags in sorted(out.items())}


__all__ = [
    "CRITICAL",
    "PASSING",
    "SERF_CHECK_ID",
    "STATUSES",
    "WARNING",
    "catalog_service_node",
    "check",
    "health_entry",
    "node",
    "node_id",
    "node_tagged_addresses",
    "serf_check",
    "service",
    "service_check",
    "service_tagged_addresses",
    "services_map",
]
