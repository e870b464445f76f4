"""Kubernetes source: Services that opt in, with the endpoints of their EndpointSlices.

Two list+watch loops (Services, EndpointSlices) feed raw objects in; a change
marks the services it touches; this thread recomputes those services only and
publishes the complete set of upstreams. A service whose endpoints all vanish
keeps its last known servers (unless `allow_empty`); a service whose data is
invalid is rejected alone, keeping its last good upstream; a watch failure never
empties anything.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from syncer.config import KubernetesClientConfig
from syncer.metrics import Metrics
from syncer.sources.base import Source
from syncer.sources.kube_translate import (
    Obj,
    Options,
    ServiceSpec,
    build_upstream,
    parse_service,
    service_of,
    trigger_time,
)
from syncer.sources.kube_watch import ListWatch
from syncer.sources.services import Rejection, ServiceUpstreams
from syncer.state import Store


def api_client(cfg: KubernetesClientConfig) -> k8s.ApiClient:
    """In-cluster config when running in a pod, else kubeconfig; `api_url` for a plain
    URL (kubectl proxy, tests)."""
    configuration = k8s.Configuration()
    if cfg.api_url:
        configuration.host = cfg.api_url
    elif cfg.kubeconfig or cfg.context or "KUBERNETES_SERVICE_HOST" not in os.environ:
        k8s_config.load_kube_config(
            config_file=str(cfg.kubeconfig) if cfg.kubeconfig else None,
            context=cfg.context,
            client_configuration=configuration,
        )
    else:
        k8s_config.load_incluster_config(client_configuration=configuration)
    return k8s.ApiClient(configuration)


class KubernetesSource(Source):
    def __init__(
        self,
        *,
        name: str,
        store: Store,
        metrics: Metrics,
        log: Any,
        api: k8s.ApiClient,
        options: Options,
        namespaces: list[str],
        label_selector: str = "",
        allow_empty: bool = False,
        watch_timeout: float = 300.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=name, store=store, metrics=metrics, log=log)
        self.options = options
        self._wall = wall
        self._lock = threading.Condition()
        self._pending: dict[str, float] = {}  # service key → when its change happened
        self._services: dict[str, Obj] = {}
        # Each Service's parsed annotations, with the object they were parsed from: a
        # slice event reuses them while the Service is unchanged (it was re-parsed on
        # every event, a tenth of the source's time under endpoint churn).
        self._specs: dict[str, tuple[Obj, ServiceSpec | Rejection | None]] = {}
        self._slices_by_service: dict[str, dict[str, Obj]] = defaultdict(dict)
        self._slice_owner: dict[str, str] = {}
        self.table = ServiceUpstreams(
            source=name, metrics=metrics, log=self.log, allow_empty=allow_empty
        )
        core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
        self.watches: list[ListWatch] = []
        for ns in namespaces or [""]:
            svc_fn = _scoped(core.list_namespaced_service, core.list_service_for_all_namespaces, ns)
            slice_fn = _scoped(
                discovery.list_namespaced_endpoint_slice,
                discovery.list_endpoint_slice_for_all_namespaces,
                ns,
            )
            self.watches.append(
                ListWatch(
                    kind="services",
                    list_fn=svc_fn,
                    on_change=self._services_changed,
                    log=self.log,
                    label_selector=label_selector,
                    watch_timeout=watch_timeout,
                )
            )
            self.watches.append(
                ListWatch(
                    kind="endpointslices",
                    list_fn=slice_fn,
                    on_change=self._slices_changed,
                    log=self.log,
                    label_selector="kubernetes.io/service-name",
                    watch_timeout=watch_timeout,
                )
            )

    # ------------------------------------------------------------ callbacks
    def _services_changed(self, changes: dict[str, Obj | None]) -> None:
        now = self._wall()
        with self._lock:
            for key, obj in changes.items():
                if obj is None:
                    self._services.pop(key, None)
                else:
                    self._services[key] = obj
                self._pending.setdefault(key, now)
            self._lock.notify_all()

    def _slices_changed(self, changes: dict[str, Obj | None]) -> None:
        now = self._wall()
        with self._lock:
            for key, obj in changes.items():
                old_service = self._slice_owner.pop(key, None)
                if old_service is not None:
                    self._slices_by_service[old_service].pop(key, None)
                    self._pending.setdefault(old_service, now)
                if obj is None:
                    continue
                service = service_of(obj)
                if service is None:
                    continue
                self._slice_owner[key] = service
                self._slices_by_service[service][key] = obj
                when = trigger_time(obj) or now
                self._pending[service] = min(self._pending.get(service, when), when)
            self._lock.notify_all()

    # ----------------------------------------------------------------- loop
    def run(self, stop: threading.Event) -> None:
        threads = [
            threading.Thread(target=w.run, args=(stop,), name=f"watch-{w.kind}", daemon=True)
            for w in self.watches
        ]
        for t in threads:
            t.start()
        try:
            while not stop.is_set():
                if all(w.synced.is_set() for w in self.watches):
                    self._process()
                self._report_health()
                with self._lock:
                    self._lock.wait_for(lambda: bool(self._pending) or stop.is_set(), timeout=1.0)
        finally:
            for w in self.watches:
                w.stop()
            for t in threads:
                t.join(timeout=5)

    def stop(self) -> None:
        self._stop.set()
        for w in self.watches:
            w.stop()
        with self._lock:
            self._lock.notify_all()
        super().stop()

    def _report_health(self) -> None:
        parts = [
            (w.healthy, f"{w.kind}: {w.last_error}" if w.last_error else "") for w in self.watches
        ]
        self.report_health(parts, "watch")

    def _process(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            first = not self.synced
            if not pending and not first:
                return
            keys = set(self._services) | set(self.table.upstreams) if first else set(pending)
            changed_at: dict[str, float] = {}
            for key in sorted(keys):
                name = self._recompute(key)
                if name is not None and key in pending:
                    changed_at[name] = pending[key]
            upstreams = self.table.by_name()
            held = self.table.held_names()
        self.publish(upstreams, changed_at_by_name=changed_at, held_empty=held)

    def _recompute(self, key: str) -> str | None:
        """Update the upstream of one service; returns its name if it has one."""
        svc = self._services.get(key)
        spec = self._spec(key, svc)
        if spec is None:  # deleted, or no longer opted in
            self.table.drop(key)
            return None
        if isinstance(spec, Rejection):
            return self.table.update(key, spec)
        slices = self._slices_by_service.get(key, {}).values()
        previous = self.table.upstreams.get(key)
        return self.table.update(key, build_upstream(spec, slices, self.options, previous))

    def _spec(self, key: str, svc: Obj | None) -> ServiceSpec | Rejection | None:
        if svc is None:
            self._specs.pop(key, None)
            return None
        cached = self._specs.get(key)
        if cached is not None and cached[0] is svc:
            return cached[1]
        spec = parse_service(svc, self.options)
        self._specs[key] = (svc, spec)
        return spec

    def status(self) -> dict[str, Any]:
        out = super().status()
        with self._lock:
            out.update(
                **self.table.status(),
                watches={
                    f"{w.kind}": {
                        "healthy": w.healthy,
                        "resource_version": w.resource_version,
                        "relists": w.relists,
                        "expired": w.gone,
                        "error": w.last_error,
                    }
                    for w in self.watches
                },
            )
        return out


def _scoped(
    namespaced: Callable[..., Any], everywhere: Callable[..., Any], namespace: str
) -> Callable[..., Any]:
    if not namespace:
        return everywhere

    def call(**kwargs: Any) -> Any:
        return namespaced(namespace, **kwargs)

    return call


def static_mapping(entries: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """`namespace/service:port → upstream` entries as Options.static expects."""
    out: dict[str, tuple[str, str]] = {}
    for source, upstream in entries.items():
        service, _, port = source.partition(":")
        out[service] = (port, upstream)
    return out
