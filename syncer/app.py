"""Wires config, store, snapshot, sources, proxy workers and the status server."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

from syncer import log as logging_
from syncer.config import (
    Config,
    ConsulSourceConfig,
    FileSourceConfig,
    KubernetesSourceConfig,
    ProxyConfig,
)
from syncer.http import StatusServer
from syncer.metrics import Metrics
from syncer.model import DEFAULT_TRAFFIC, TrafficPolicy, Upstream
from syncer.plan import Mode, Ownership, Plan, PlanPolicy, plan
from syncer.process import (
    freeze_startup_heap,
    keep_large_buffers_mmapped,
    raise_descriptor_limit,
)
from syncer.proxy.dyups import ClientSettings, DyupsClient, Flavour
from syncer.proxy.fleet import Fleet
from syncer.proxy.pacing import Budget, FairSlots, kick_count
from syncer.proxy.worker import ProxyWorker, WorkerSettings
from syncer.snapshot import SnapshotError, SnapshotWriter
from syncer.snapshot import load as load_snapshot
from syncer.sources.base import Source
from syncer.sources.file import FileSource
from syncer.state import Store

# Propagation kicks running at once across all proxies (see ProxyWorker._kick_loop):
# enough that a few tens of proxies, each kicking after every write, never wait for
# one (the data plane's 50 ms budget has no room for a queue), few enough that
# hundreds of proxies writing back to back do not spend the interpreter on kicks.
CONCURRENT_KICKS = 32


def client_settings(
    proxy: ProxyConfig, *, verify: bool, verify_min_bytes: int = 0
) -> ClientSettings:
    tls = proxy.tls
    return ClientSettings(
        url=proxy.url,
        connect_timeout=proxy.connect_timeout,
        read_timeout=proxy.read_timeout,
        headers=tuple(proxy.headers.items()),
        basic_auth=(proxy.basic_auth.username, proxy.basic_auth.password)
        if proxy.basic_auth
        else None,
        ca_file=str(tls.ca_file) if tls and tls.ca_file else None,
        cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
        key_file=str(tls.key_file) if tls and tls.key_file else None,
        insecure_skip_verify=bool(tls and tls.insecure_skip_verify),
        flavour=None if proxy.flavour == "auto" else Flavour(proxy.flavour),
        verify_after_write=verify,
        verify_min_bytes=verify_min_bytes,
    )


def worker_settings(config: Config, proxy: ProxyConfig) -> WorkerSettings:
    budget = Budget.for_zone(proxy.shm_zone_size, proxy.read_msg_timeout)
    if proxy.write_budget:
        budget = Budget(rate=float(proxy.write_budget), burst=min(budget.burst, proxy.write_budget))
    kicks = 0
    if proxy.kick:
        kicks = proxy.kick_gets if proxy.kick_gets is not None else kick_count(proxy.nginx_workers)
    return WorkerSettings(
        debounce=config.debounce,
        probe_interval=config.probe_interval,
        resync_interval=config.resync_interval,
        mode=Mode(config.policy),
        max_delete_fraction=config.max_delete_fraction,
        owned_prefix=config.owned_prefix,
        adopt=frozenset(config.adopt),
        budget=budget,
        read_msg_timeout=proxy.read_msg_timeout,
        kick_gets=kicks,
        # A proxy that restarted serves 502s for every dynamic upstream until it is
        # re-posted: look for it again at least every two probe intervals.
        down_backoff_max=2 * config.probe_interval,
        dump_path=proxy.dump_path,
        max_body_size=proxy.max_body_size,
        zone=proxy.zone,
    )


def build_source(
    cfg: FileSourceConfig | KubernetesSourceConfig | ConsulSourceConfig,
    store: Store,
    metrics: Metrics,
    log: Any,
    *,
    allow_empty: bool = False,
    traffic: TrafficPolicy = DEFAULT_TRAFFIC,
) -> Source:
    """The source `cfg` describes; `traffic` is the policy of an upstream whose
    service (or file entry) does not set its own (`traffic:` in the config)."""
    if isinstance(cfg, ConsulSourceConfig):
        from syncer.sources import consul_translate
        from syncer.sources.consul import ConsulSource, make_client

        tls = cfg.tls
        return ConsulSource(
            name=cfg.source_name,
            store=store,
            metrics=metrics,
            log=log,
            client=make_client(
                address=cfg.address,
                scheme=cfg.scheme,
                token=cfg.token,
                datacenter=cfg.datacenter,
                ca_file=str(tls.ca_file) if tls and tls.ca_file else None,
                cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
                key_file=str(tls.key_file) if tls and tls.key_file else None,
                connect_timeout=cfg.connect_timeout,
            ),
            options=consul_translate.Options(
                tag=cfg.tag,
                meta_prefix=cfg.meta_prefix,
                statuses=tuple(cfg.statuses),
                use_consul_weights=cfg.use_consul_weights,
                zone_meta=cfg.zone_meta or "",
                traffic=traffic,
            ),
            wait=cfg.wait,
            min_interval=cfg.min_interval,
            consistency=cfg.consistency,
            namespace=cfg.namespace,
            partition=cfg.partition,
            health_tag=cfg.health_tag,
            allow_empty=allow_empty,
        )
    if isinstance(cfg, KubernetesSourceConfig):
        # Imported here so that file-only installs need no Kubernetes client.
        from syncer.sources.kube_translate import Options
        from syncer.sources.kubernetes import KubernetesSource, api_client, static_mapping

        return KubernetesSource(
            name=cfg.source_name,
            store=store,
            metrics=metrics,
            log=log,
            api=api_client(cfg.client),
            options=Options(
                prefix=cfg.annotation_prefix,
                terminating_fallback=cfg.terminating_fallback,
                allow_fqdn=cfg.allow_fqdn,
                static=static_mapping(cfg.static),
                traffic=traffic,
            ),
            namespaces=cfg.namespaces,
            label_selector=cfg.label_selector,
            allow_empty=allow_empty,
            watch_timeout=cfg.watch_timeout,
        )
    return FileSource(
        name=cfg.source_name,
        path=cfg.path,
        store=store,
        metrics=metrics,
        log=log,
        poll_interval=cfg.poll_interval,
        allow_hostnames=cfg.allow_hostnames,
        traffic=traffic,
    )


class App:
    def __init__(self, config: Config, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.log = logging_.get("dyups_syncer")
        self.metrics = metrics or Metrics()
        self.stop_event = threading.Event()
        self.writer: SnapshotWriter | None = None
        self.store = Store(
            [s.source_name for s in config.sources],
            allow_empty=config.allow_empty,
            on_change=self._mark_dirty,
        )
        self.writer = SnapshotWriter(
            config.snapshot_path, self.store.snapshot, on_error=self._snapshot_failed
        )
        self.sources = [
            build_source(
                s,
                self.store,
                self.metrics,
                self.log,
                allow_empty=config.allow_empty,
                traffic=config.traffic.policy(),
            )
            for s in config.sources
        ]
        self._kick_slots = FairSlots(CONCURRENT_KICKS)
        self.fleet: Fleet[ProxyConfig] = Fleet(
            make_worker=self._make_worker, store=self.store, metrics=self.metrics, log=self.log
        )
        self.fleet.update("static", {p.label: p for p in config.proxies.static})
        self.discovery: Any = None
        self.consul_discovery: Any = None
        self.elector: Any = None
        self.metrics.upstreams_desired.set_function(lambda: len(self.store.current().upstreams))
        self.metrics.servers_desired.set_function(lambda: self.store.current().servers)
        self.http: StatusServer | None = None

    @property
    def workers(self) -> list[ProxyWorker]:
        return self.fleet.workers

    def _make_worker(self, label: str, proxy: ProxyConfig, stop: threading.Event) -> ProxyWorker:
        assert self.writer is not None
        return ProxyWorker(
            label=label,
            client=DyupsClient(
                client_settings(
                    proxy,
                    verify=self.config.verify_after_write,
                    verify_min_bytes=self.config.verify_min_bytes,
                )
            ),
            store=self.store,
            settings=worker_settings(self.config, proxy),
            metrics=self.metrics,
            log=self.log,
            stop=stop,
            persist_now=self.writer.write_now,
            may_write=lambda: self._may_write(label),
            kick_slots=self._kick_slots,
        )

    def _may_write(self, proxy: str) -> bool:
        """Asked before every write: the leader writes every proxy; with shards, the
        holder of the proxy's shard writes it."""
        return self.elector is None or bool(self.elector.may_write(proxy))

    def _build_elector(self) -> Any:
        """The leader election configured, or None (imported only when configured)."""
        le = self.config.leader_election
        if not le.enabled:
            return None
        # Every backend publishes what this replica owns and reads the leader's record.
        common: dict[str, Any] = {
            "config": le,
            "metrics": self.metrics,
            "log": self.log,
            "payload": self.store.export_ownership,
            "on_payload": self.store.import_ownership,
        }
        if le.backend == "consul":
            from syncer.consul_lock import ConsulLock
            from syncer.sources.consul import client_from

            return ConsulLock(client=client_from(le.consul.client), **common)
        from syncer.sources.kubernetes import api_client

        if le.shards > 1:
            from syncer.shard_election import ShardElector

            return ShardElector(api=api_client(le.client), **common)
        from syncer.leader import LeaderElector

        return LeaderElector(api=api_client(le.client), **common)

    def _start_kubernetes_parts(self) -> None:
        """Leader election and proxy discovery (imported only when configured)."""
        self.elector = self._build_elector()
        if self.elector is not None:
            self.elector.start()
        discovery = self.config.proxies.kubernetes
        if discovery is not None:
            from syncer.sources.kube_proxies import ProxyDiscovery
            from syncer.sources.kubernetes import api_client

            self.discovery = ProxyDiscovery(
                cfg=discovery,
                api=api_client(discovery.client),
                update=self.fleet.update,
                log=self.log,
            )
            self.discovery.start()
        if self.config.proxies.consul is not None:
            from syncer.sources.consul_proxies import ConsulProxyDiscovery

            self.consul_discovery = ConsulProxyDiscovery(
                cfg=self.config.proxies.consul, update=self.fleet.update, log=self.log
            )
            self.consul_discovery.start()

    def _mark_dirty(self) -> None:
        if self.writer is not None:
            self.writer.mark_dirty()

    def _snapshot_failed(self, error: Exception) -> None:
        self.metrics.snapshot_errors.labels("write").inc()
        self.log.error(
            "snapshot_write_failed",
            path=str(self.config.snapshot_path),
            error=str(error),
            hint="the syncer keeps running; ownership may be lost on restart",
        )

    # -------------------------------------------------------------- lifecycle
    def restore_snapshot(self) -> None:
        path = self.config.snapshot_path
        try:
            data = load_snapshot(path)
        except SnapshotError as e:
            self.metrics.snapshot_errors.labels("read").inc()
            self.log.warning(
                "snapshot_unusable",
                path=str(path),
                error=str(e),
                hint="starting from the sources alone; nothing is deleted because of it",
            )
            return
        if data is None:
            self.log.info("snapshot_absent", path=str(path))
            return
        for problem in self.store.restore(data):
            self.log.warning("snapshot_entry_skipped", problem=problem)
        self.log.info(
            "snapshot_restored", path=str(path), upstreams=len(self.store.current().upstreams)
        )

    def start(self, *, serve_http: bool = True) -> None:
        self.restore_snapshot()
        assert self.writer is not None
        self.writer.start()
        self._start_kubernetes_parts()
        for source in self.sources:
            source.start()
        self.fleet.start()
        if serve_http:
            self.http = StatusServer(
                self.config.listen_address,
                registry=self.metrics.registry,
                healthy=self.healthy,
                ready=self.ready,
                state=self.state if self.config.state_endpoint else None,
            )
            self.http.start()
        self.log.info(
            "started",
            proxies=[w.label for w in self.workers],
            sources=[s.name for s in self.sources],
            listen=self.config.listen,
        )

    def shutdown(self) -> None:
        """Finish the calls in flight, flush the snapshot, stop."""
        self.stop_event.set()
        self.store.wake()
        for source in self.sources:
            source.stop()
        for discovery in (self.discovery, self.consul_discovery):
            if discovery is not None:
                discovery.stop()
        self.fleet.stop_all()
        if self.elector is not None:
            self.elector.stop()  # after the workers: nothing writes once the lease is released
        if self.writer is not None:
            self.writer.stop()
        if self.http is not None:
            self.http.stop()
        self.log.info("stopped")

    def run_forever(self) -> None:
        def on_term(signum: int, _frame: FrameType | None) -> None:
            self.stop_event.set()  # handlers only set flags

        def on_usr1(signum: int, _frame: FrameType | None) -> None:
            self._override_requested.set()

        self._override_requested = threading.Event()
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGUSR1, on_usr1)
        raise_descriptor_limit(self.log)
        keep_large_buffers_mmapped(self.log)
        self.start()
        started, heap_frozen = time.monotonic(), False
        while not self.stop_event.wait(0.2):
            if not heap_frozen and (
                self.ready()[0] or time.monotonic() - started > FREEZE_HEAP_AT_LATEST
            ):
                freeze_startup_heap(self.log)
                heap_frozen = True
            if self._override_requested.is_set():
                self._override_requested.clear()
                version = self.store.override_breaker()
                self.log.warning(
                    "breaker_override",
                    version=version,
                    hint="mass deletion allowed until desired state changes",
                )
        self.shutdown()

    # ----------------------------------------------------------------- health
    def healthy(self) -> tuple[bool, list[str]]:
        reasons = [f"source {s.name}: thread stopped" for s in self.sources if not s.alive]
        reasons += [f"proxy {w.label}: worker thread stopped" for w in self.workers if not w.alive]
        return not reasons, reasons

    def ready(self) -> tuple[bool, list[str]]:
        reasons = []
        if not self.store.current().ready:
            reasons += [
                f"source {s.name}: first read not done" for s in self.sources if not s.synced
            ]
        for discovery in (self.discovery, self.consul_discovery):
            if discovery is not None and not discovery.synced:
                reasons.append("proxy discovery: first read not done")
        for w in self.workers:
            if not (w.reconciled_once.is_set() or w.up is False or w.following):
                reasons.append(f"proxy {w.label}: not reconciled yet")
        return not reasons, reasons

    def state(self) -> dict[str, Any]:
        desired = self.store.current()
        return {
            "store": self.store.status(),
            "sources": {s.name: s.status() for s in self.sources},
            "desired": {
                name: {"body": u.render(), "changed_at": desired.changed_at.get(name)}
                for name, u in sorted(desired.upstreams.items())
            },
            "proxies": {w.label: w.status() for w in self.workers},
            "leader": None
            if self.elector is None
            else self.elector.status([w.label for w in self.workers]),
        }


SOURCE_READ_TIMEOUT = 30.0  # how long `plan` waits for a source's first complete read
FREEZE_HEAP_AT_LATEST = 60.0  # seconds after start, if never ready (a proxy down)


def dry_run(config: Config, log: Any) -> tuple[dict[str, Plan | str], Mapping[str, Upstream]]:
    """Read every source once and every proxy once; plan without writing anything.
    Returns per proxy label a Plan, or an error text."""
    metrics = Metrics()
    store = Store([s.source_name for s in config.sources], allow_empty=config.allow_empty)
    try:
        data = load_snapshot(config.snapshot_path)
    except SnapshotError as e:
        log.warning("snapshot_unusable", error=str(e))
        data = None
    if data is not None:
        store.restore(data)
    for cfg in config.sources:
        source = build_source(
            cfg,
            store,
            metrics,
            log,
            allow_empty=config.allow_empty,
            traffic=config.traffic.policy(),
        )
        if isinstance(source, FileSource):
            source.poll()
        else:
            source.start()
            deadline = time.monotonic() + SOURCE_READ_TIMEOUT
            while not store.synced(source.name) and time.monotonic() < deadline:
                store.wait_newer(store.current().version, 0.2)
            source.stop()
        if not store.synced(source.name):
            log.warning("source_unavailable", source=source.name, error=source.last_error)
    desired = store.current()
    results: dict[str, Plan | str] = {}
    for proxy in config.proxies.static:
        if not desired.ready:
            results[proxy.label] = "not every source could be read, and the snapshot has no copy"
            continue
        client = DyupsClient(client_settings(proxy, verify=False))
        try:
            observed = client.observe()
        except Exception as e:
            results[proxy.label] = f"cannot read the proxy: {e}"
            continue
        finally:
            client.close()
        record = store.proxy_record(proxy.label)
        ownership = Ownership(frozenset(record.owned), config.owned_prefix, frozenset(config.adopt))
        policy = PlanPolicy(
            mode=Mode(config.policy),
            max_delete_fraction=config.max_delete_fraction,
            deletes_allowed=not desired.restoring,
        )
        results[proxy.label] = plan(
            desired.upstreams, observed, ownership, policy, applied=record.applied
        )
    return results, desired.upstreams
