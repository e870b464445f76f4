"""Builders for Kubernetes objects as plain dicts, in the shapes of the API reference.

Every builder returns what a client would send to the API server (or what a test hands
to `FakeKubeAPI.create`): `apiVersion`, `kind`, `metadata` (name, namespace, labels,
annotations) and the resource's own fields, spelled as on the wire (camelCase). The
server fills in `uid`, `creationTimestamp`, `generation` and `resourceVersion`.

The shapes follow the Kubernetes API reference pages for Service (core/v1),
EndpointSlice (discovery.k8s.io/v1), Pod (core/v1) and Lease (coordination.k8s.io/v1),
not any model of this project. The official Python client validates its models with
`extra="forbid"`, so a misspelt or invented field here makes the client tests fail.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
ENDPOINTSLICE_CONTROLLER = "endpointslice-controller.k8s.io"


def rfc3339(when: datetime | None = None) -> str:
    """A `Time`: RFC 3339 in UTC with second precision, as `creationTimestamp`."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(when: datetime | None = None) -> str:
    """A `MicroTime`: RFC 3339 in UTC with microseconds, as a Lease's `renewTime`."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _metadata(
    namespace: str,
    name: str,
    labels: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None,
) -> JSON:
    meta: JSON = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# --- Service -------------------------------------------------------------------------


def service_port(
    port: int,
    *,
    name: str | None = None,
    target_port: int | str | None = None,
    protocol: str = "TCP",
    app_protocol: str | None = None,
    node_port: int | None = None,
) -> JSON:
    """A ServicePort: `targetPort` defaults to `port` (as the API server defaults it)."""
    out: JSON = {"port": port, "protocol": protocol}
    if name is not None:
        out["name"] = name
    out["targetPort"] = port if target_port is None else target_port
    if app_protocol is not None:
        out["appProtocol"] = app_protocol
    if node_port is not None:
        out["nodePort"] = node_port
    return out


def service(
    namespace: str,
    name: str,
    *,
    ports: Sequence[Mapping[str, Any]] | None = None,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    cluster_ip: str = "10.96.0.10",
    selector: Mapping[str, str] | None = None,
    service_type: str = "ClusterIP",
) -> JSON:
    """A core/v1 Service. `ports` items are ServicePorts (`name`, `port`, `targetPort`,
    `protocol`; see `service_port`); missing `protocol` and `targetPort` get the server's
    defaults. The default is one port "http" 80 → 8080.
    `cluster_ip="None"` makes a headless service. `selector` defaults to `{"app": name}`."""
    port_list = [
        {"protocol": "TCP", **dict(p), "targetPort": p.get("targetPort", p["port"])}
        for p in (ports if ports is not None else [service_port(80, name="http", target_port=8080)])
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(namespace, name, labels, annotations),
        "spec": {
            "type": service_type,
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "selector": dict(selector) if selector is not None else {"app": name},
            "ports": port_list,
        },
        "status": {"loadBalancer": {}},
    }


# --- EndpointSlice -------------------------------------------------------------------


def endpoint(
    addresses: str | Sequence[str],
    *,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = False,
    node_name: str | None = None,
    zone: str | None = None,
    pod: str | None = None,
    pod_namespace: str | None = None,
    pod_uid: str | None = None,
    hostname: str | None = None,
    for_zones: Sequence[str] | None = None,
) -> JSON:
    """A discovery/v1 Endpoint. `serving` defaults to `ready` (what the EndpointSlice
    controller writes for a pod that is not terminating). A condition given as None is
    left out (the API reads an absent `ready`/`serving` as true, `terminating` as false).
    `pod` sets `targetRef` to that Pod (its namespace defaults to the slice's when the
    endpoint goes through `endpoint_slice`); `for_zones` sets `hints.forZones`."""
    conditions: JSON = {}
    for key, value in (
        ("ready", ready),
        ("serving", ready if serving is None else serving),
        ("terminating", terminating),
    ):
        if value is not None:
            conditions[key] = value
    out: JSON = {
        "addresses": [addresses] if isinstance(addresses, str) else list(addresses),
        "conditions": conditions,
    }
    if hostname is not None:
        out["hostname"] = hostname
    if node_name is not None:
        out["nodeName"] = node_name
    if zone is not None:
        out["zone"] = zone
    if pod is not None:
        ref: JSON = {"kind": "Pod", "name": pod}
        if pod_namespace is not None:
            ref["namespace"] = pod_namespace
        if pod_uid is not None:
            ref["uid"] = pod_uid
        out["targetRef"] = ref
    if for_zones is not None:
        out["hints"] = {"forZones": [{"name": z} for z in for_zones]}
    return out


def endpoint_port(
    port: int | None,
    *,
    name: str | None = "http",
    protocol: str = "TCP",
    app_protocol: str | None = None,
) -> JSON:
    """A discovery/v1 EndpointPort (`port` is the pod's port, i.e. the targetPort)."""
    out: JSON = {"protocol": protocol}
    if name is not None:
        out["name"] = name
    if port is not None:
        out["port"] = port
    if app_protocol is not None:
        out["appProtocol"] = app_protocol
    return out


def endpoint_slice(
    namespace: str,
    name: str,
    *,
    service: str,
    address_type: str = "IPv4",
    endpoints: Sequence[Mapping[str, Any]] = (),
    ports: Sequence[Mapping[str, Any]] | None = None,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    managed_by: str = ENDPOINTSLICE_CONTROLLER,
    service_uid: str | None = None,
) -> JSON:
    """A discovery.k8s.io/v1 EndpointSlice for `service`, labelled as the EndpointSlice
    controller labels its slices (`kubernetes.io/service-name`,
    `endpointslice.kubernetes.io/managed-by`). `ports` defaults to one port "http"/8080.
    With `service_uid` the slice also gets the controller's ownerReference."""
    all_labels = {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: managed_by}
    all_labels.update(labels or {})
    meta = _metadata(namespace, name, all_labels, annotations)
    meta["generateName"] = f"{service}-"
    if service_uid is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "name": service,
                "uid": service_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": address_type,
        "endpoints": [_with_ref_namespace(e, namespace) for e in endpoints],
        "ports": [dict(p) for p in (ports if ports is not None else [endpoint_port(8080)])],
    }


def _with_ref_namespace(ep: Mapping[str, Any], namespace: str) -> JSON:
    """The controller's targetRef names the pod's namespace, which is the slice's."""
    out = copy.deepcopy(dict(ep))
    ref = out.get("targetRef")
    if isinstance(ref, dict):
        ref.setdefault("namespace", namespace)
    return out


# --- Pod ------------------------------------------------------------------------------


def pod(
    namespace: str,
    name: str,
    *,
    ip: str | None,
    labels: Mapping[str, str] | None = None,
    ready: bool = True,
    node: str | None = None,
    phase: str = "Running",
    annotations: Mapping[str, str] | None = None,
    ips: Sequence[str] | None = None,
    container_port: int | None = 8080,
) -> JSON:
    """A core/v1 Pod with one container and the status the kubelet reports: `podIP`,
    `podIPs`, and the Ready/ContainersReady conditions. `ip=None` is a pod that has
    no IP yet (Pending)."""
    now = rfc3339()
    container: JSON = {"name": "app", "image": "registry.invalid/app:1"}
    if container_port is not None:
        container["ports"] = [{"containerPort": container_port, "protocol": "TCP"}]
    spec: JSON = {"containers": [container], "restartPolicy": "Always"}
    if node is not None:
        spec["nodeName"] = node
    flag = "True" if ready else "False"
    status: JSON = {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True" if node else "False"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
        ],
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": a} for a in (ips if ips is not None else [ip])]
    if phase in ("Running", "Succeeded", "Failed"):
        status["startTime"] = now
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(namespace, name, labels, annotations),
        "spec": spec,
        "status": status,
    }


# --- Lease ----------------------------------------------------------------------------


def lease(
    namespace: str,
    name: str,
    holder: str | None,
    *,
    lease_duration_seconds: int = 15,
    acquire_time: datetime | str | None = None,
    renew_time: datetime | str | None = None,
    lease_transitions: int = 0,
    labels: Mapping[str, str] | None = None,
) -> JSON:
    """A coordination.k8s.io/v1 Lease held by `holder` (None: released). Times are
    MicroTime strings; both default to now."""

    def as_micro(value: datetime | str | None) -> str:
        return value if isinstance(value, str) else micro_time(value)

    acquired = as_micro(acquire_time)
    spec: JSON = {
        "leaseDurationSeconds": lease_duration_seconds,
        "acquireTime": acquired,
        "renewTime": as_micro(renew_time) if renew_time is not None else acquired,
        "leaseTransitions": lease_transitions,
    }
    if holder is not None:
        spec["holderIdentity"] = holder
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": _metadata(namespace, name, labels, None),
        "spec": spec,
    }
