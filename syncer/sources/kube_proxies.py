"""Proxy discovery: every ready Pod of the proxy fleet becomes a proxy worker.

A pod is a proxy while it runs, has an IP, is Ready and is not being deleted. A
new pod gets a worker (whose first round is a full reconcile: a fresh nginx holds
no dynamic upstreams); a pod that goes away stops its worker and its metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client as k8s

from syncer.config import KubernetesProxiesConfig, ProxyConfig
from syncer.sources.kube_watch import ListWatch, Obj

FLEET_GROUP = "kubernetes"


def pod_is_proxy(pod: Obj) -> bool:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def targets_from_pods(
    pods: Mapping[str, Obj], cfg: KubernetesProxiesConfig
) -> dict[str, ProxyConfig]:
    settings = cfg.model_dump(exclude={"namespace", "label_selector", "port", "scheme", "client"})
    out: dict[str, ProxyConfig] = {}
    for pod in pods.values():
        if not pod_is_proxy(pod):
            continue
        ip = str(pod["status"]["podIP"])
        host = f"[{ip}]" if ":" in ip else ip
        name = str(pod["metadata"]["name"])
        out[name] = ProxyConfig(url=f"{cfg.scheme}://{host}:{cfg.port}", name=name, **settings)
    return out


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
            on_change=self._changed,
            log=self.log,
            label_selector=cfg.label_selector,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, ProxyConfig] | None = None

    def _changed(self, _: dict[str, Obj | None]) -> None:
        targets = targets_from_pods(self.watch.objects, self.cfg)
        if targets != self._last:
            self._last = targets
            self._update(FLEET_GROUP, targets)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.watch.run, args=(self._stop,), name="watch-proxy-pods", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.watch.stop()
        if self._thread:
            self._thread.join(timeout=5)

    @property
    def synced(self) -> bool:
        return self.watch.synced.is_set()
