"""Proxy discovery: every ready Pod of the proxy fleet becomes a proxy worker.

A pod is a proxy while it runs, has an IP, is Ready and is not being deleted. A
new pod gets a worker (whose first round is a full reconcile: a fresh nginx holds
no dynamic upstreams); a pod that goes away stops its worker and its metrics.

A proxy's zone is the `zone_label` label of the Node it runs on (`spec.nodeName`),
unless `zone` is set in the configuration (then, or with `zone_label: ""`, Nodes are
not read at all). Nodes are watched (cluster-scoped, only those with the label), so
that a relabelled node re-targets its proxies. Reading Nodes is optional: if it fails
(no RBAC for nodes, say) proxies are discovered all the same, without a zone from
their node (zones already read are kept through an outage, as pods are), and the
failure is logged once, not at every retry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from syncer.config import KubernetesProxiesConfig, ProxyConfig
from syncer.model import label_value
from syncer.sources.kube_watch import ListWatch, Obj

FLEET_GROUP = "kubernetes"
# How long the first pod list waits for the first node list (so that the first
# workers start with their zone rather than being replaced a moment later).
NODES_FIRST_WAIT = 5.0


def pod_is_proxy(pod: Obj) -> bool:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def node_zone(node: Obj, label: str) -> str:
    """The zone a Node's `label` gives, or "" (absent, or not a label value)."""
    meta = node.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    value = labels.get(label) if isinstance(labels, Mapping) and label else None
    return label_value(value) if isinstance(value, str) else ""


def node_summary(node: Obj, label: str) -> Obj:
    """The part of a Node that is read (its name and zone label): what the node watch
    holds. A whole Node (status with its image list) is tens of KiB, held for every
    node of the cluster."""
    meta = node.get("metadata")
    if not isinstance(meta, Mapping):
        return node  # malformed: node_zone finds no zone in it either
    labels = meta.get("labels")
    kept = {label: labels[label]} if isinstance(labels, Mapping) and label in labels else {}
    return {"metadata": {"name": meta.get("name"), "labels": kept}}


def _node_name(pod: Obj) -> str:
    spec = pod.get("spec")
    name = spec.get("nodeName") if isinstance(spec, Mapping) else None
    return name if isinstance(name, str) else ""


def targets_from_pods(
    pods: Mapping[str, Obj],
    cfg: KubernetesProxiesConfig,
    zones: Mapping[str, str] | None = None,
) -> dict[str, ProxyConfig]:
    """The proxies among `pods`; `zones` maps node names to zones (see `node_zone`).
    A `zone` set in `cfg` wins over the node's."""
    settings = cfg.model_dump(
        exclude={"namespace", "label_selector", "port", "scheme", "client", "zone_label"}
    )
    out: dict[str, ProxyConfig] = {}
    for pod in pods.values():
        if not pod_is_proxy(pod):
            continue
        ip = str(pod["status"]["podIP"])
        host = f"[{ip}]" if ":" in ip else ip
        name = str(pod["metadata"]["name"])
        zone = cfg.zone or (zones or {}).get(_node_name(pod), "")
        out[name] = ProxyConfig(
            url=f"{cfg.scheme}://{host}:{cfg.port}", name=name, **{**settings, "zone": zone}
        )
    return out


class _FailuresLoggedOnce:
    """The node watch's logger: its retries are not warned about one by one (the
    discovery logs a failure to read Nodes once, and its end)."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def bind(self, **kwargs: Any) -> _FailuresLoggedOnce:
        return _FailuresLoggedOnce(self._log.bind(**kwargs))

    def warning(self, event: str, **kwargs: Any) -> None:
        self._log.debug(event, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


class ProxyDiscovery:
    def __init__(
        self,
        *,
        cfg: KubernetesProxiesConfig,
        api: k8s.ApiClient,
        update: Callable[[str, dict[str, ProxyConfig]], None],
        log: Any,
    ) -> None:
        self.cfg = cfg
        self._update = update
        self.log = log.bind(discovery="pods")
        core = k8s.CoreV1Api(api)

        def list_pods(**kwargs: Any) -> Any:
            return core.list_namespaced_pod(cfg.namespace, **kwargs)

        self.watch = ListWatch(
            kind="pods",
            list_fn=list_pods,
            on_change=self._pods_changed,
            log=self.log,
            label_selector=cfg.label_selector,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Both watches' threads change these; `_lock` also keeps updates in order.
        self._lock = threading.Lock()
        self._pods: dict[str, Obj] = {}
        self._pods_seen = False
        self._zones: dict[str, str] = {}  # node name → zone
        self._last: dict[str, ProxyConfig] | None = None
        # Set once the first node list is done or failed (or on stop).
        self._nodes_settled = threading.Event()
        self._nodes_failing = False
        self.nodes: ListWatch | None = None
        if cfg.zone_label and not cfg.zone:
            self.nodes = ListWatch(
                kind="nodes",
                list_fn=lambda **kwargs: self._list_nodes(core, **kwargs),
                on_change=self._nodes_changed,
                log=_FailuresLoggedOnce(self.log),
                # Only the nodes that have the label: one that loses it is DELETED.
                label_selector=cfg.zone_label,
                keep=lambda node: node_summary(node, cfg.zone_label),
            )

    # ----------------------------------------------------------------- nodes
    def _list_nodes(self, core: Any, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            self._nodes_settled.set()  # the list before this watch, and its changes, are done
        try:
            response = core.list_node(**kwargs)
        except Exception as e:
            if not self._nodes_failing:
                self._nodes_failing = True
                self.log.warning(
                    "node_zones_unavailable",
                    error=_describe(e),
                    label=self.cfg.zone_label,
                    hint="proxies are still discovered; until Nodes can be read (RBAC: "
                    "list/watch on nodes) their zones stay as last read from their node, "
                    "none if never read; retrying quietly",
                )
            self._nodes_settled.set()
            raise
        if self._nodes_failing:
            self._nodes_failing = False
            self.log.info("node_zones_available", label=self.cfg.zone_label)
        return response

    def _nodes_changed(self, changes: dict[str, Obj | None]) -> None:
        with self._lock:
            for key, node in changes.items():
                name = key.rpartition("/")[2]  # cluster-scoped: "/<name>"
                zone = node_zone(node, self.cfg.zone_label) if node is not None else ""
                if zone:
                    self._zones[name] = zone
                else:
                    self._zones.pop(name, None)
            self._publish()

    # ------------------------------------------------------------------ pods
    def _pods_changed(self, changes: dict[str, Obj | None]) -> None:
        with self._lock:
            for key, pod in changes.items():
                if pod is None:
                    self._pods.pop(key, None)
                else:
                    self._pods[key] = pod
            self._pods_seen = True
            self._publish()

    def _publish(self) -> None:
        """Under `_lock`: hand the fleet the targets if they changed."""
        if not self._pods_seen:
            return  # nothing is known about the fleet yet
        targets = targets_from_pods(self._pods, self.cfg, self._zones)
        if targets != self._last:
            self._last = targets
            self._update(FLEET_GROUP, targets)

    def _run_pods(self) -> None:
        if self.nodes is not None:
            self._nodes_settled.wait(NODES_FIRST_WAIT)
        self.watch.run(self._stop)

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self.nodes is not None:
            self._threads.append(
                threading.Thread(
                    target=self.nodes.run, args=(self._stop,), name="watch-proxy-nodes", daemon=True
                )
            )
        self._threads.append(
            threading.Thread(target=self._run_pods, name="watch-proxy-pods", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._nodes_settled.set()
        self.watch.stop()
        if self.nodes is not None:
            self.nodes.stop()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def synced(self) -> bool:
        """The pods were listed (Nodes are optional: they do not hold readiness back)."""
        return self.watch.synced.is_set()


def _describe(e: Exception) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status}: {e.reason}"
    return f"{e.__class__.__name__}: {e}"
