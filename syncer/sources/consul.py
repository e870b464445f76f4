"""Consul source: services that opt in, followed with blocking queries.

One blocking query on the catalog (`/v1/catalog/services`, filtered to services that
carry the opt-in tag or meta) starts and stops one watcher per service; each watcher
runs a blocking query on `/v1/health/service/<name>` (with `?passing` when only passing
instances are served, except for a service whose policy has `drain-as-backup`: that
one needs every instance, to keep those that leave as draining servers; the watcher
switches queries, at once, when the answer shows the policy changed). Blocking-query
hygiene follows
Consul's documentation: the index is reset when it goes backwards or is not above
zero, a loop that returns unchanged quickly is rate-limited, `wait` gets jitter,
errors back off, and a 200 whose index did not move is "no change".

Only the API that py-consul and python-consul2 share is used: `consul.Consul(...)`
and the raw `http.get(CB.json(index=True), path, params)`; the ACL token and the
HTTP timeout are set on the library's `requests` session, because python-consul2's
client has no timeout at all (a dead connection would hang forever).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import consul
import requests

try:  # py-consul keeps the callbacks here...
    from consul.callback import CB
except ImportError:  # ...python-consul2 in consul.base
    from consul.base import CB

from syncer.config import ConsulClientConfig
from syncer.metrics import Metrics
from syncer.sources.base import Source
from syncer.sources.consul_translate import Options, build_upstream, needs_every_instance
from syncer.sources.services import ServiceUpstreams
from syncer.state import Store

ERRORS = (consul.ConsulException, requests.RequestException, OSError, ValueError, KeyError)


class _TimeoutSession(requests.Session):
    """A requests session whose every call has a timeout: the blocking `wait` plus
    Consul's jitter (wait/16) plus a margin."""

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            query = parse_qs(urlsplit(str(url)).query)
            wait = parse_wait(query["wait"][0]) if "wait" in query else 0.0
            kwargs["timeout"] = (self.margin, self.margin + wait * 17 / 16)
        return super().request(method, url, *args, **kwargs)


def parse_wait(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    return float(text) if text.replace(".", "", 1).isdigit() else 300.0


def make_client(
    *,
    address: str,
    scheme: str,
    token: str | None,
    datacenter: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    connect_timeout: float,
) -> Any:
    host, _, port = address.rpartition(":")
    cert = (cert_file, key_file) if cert_file and key_file else cert_file
    client = consul.Consul(
        host=host or address,
        port=int(port or 8500),
        scheme=scheme,
        dc=datacenter,
        verify=ca_file if ca_file else True,
        cert=cert,
    )
    session = _TimeoutSession(connect_timeout)
    token = token or os.environ.get("CONSUL_HTTP_TOKEN")
    if token:
        session.headers["X-Consul-Token"] = token
    client.http.session = session
    return client


class BlockingQuery:
    """One endpoint followed with blocking queries, by the documented rules."""

    def __init__(
        self,
        *,
        fetch: Callable[[int, str], tuple[int, Any]],
        on_change: Callable[[Any, int], None],
        wait: float,
        min_interval: float,
        backoff_max: float,
        log: Any,
    ) -> None:
        self._fetch = fetch
        self._on_change = on_change
        self._wait = wait
        self._min_interval = min_interval
        self._backoff_max = backoff_max
        self.log = log
        self.index = 0
        self.healthy = False
        self.synced = threading.Event()
        self.last_error = ""

    def refetch(self) -> None:
        """Make the next fetch answer at once rather than block (forget the index).
        For `on_change`, which runs between two fetches, when the query must change."""
        self.index = 0

    def run(self, stop: threading.Event, clock: Callable[[], float] = time.monotonic) -> None:
        failures = 0
        while not stop.is_set():
            # Jitter spreads many watchers' reconnections (the agent adds its own too).
            wait = self._wait * random.uniform(1.0, 1.0625)
            started = clock()
            try:
                index, data = self._fetch(self.index, f"{wait:.0f}s")
            except ERRORS as e:
                failures += 1
                self._failed("consul_query_failed", e, failures, stop)
                continue
            failures = 0
            self.healthy = True
            self.last_error = ""
            first = not self.synced.is_set()
            if index < self.index or index <= 0:
                # Documented: an index that goes backwards (snapshot restore, new leader)
                # or is not above zero resets the query.
                self.log.info("consul_index_reset", previous=self.index, index=index)
                self.index = 0
                changed = True
            else:
                changed = first or index != self.index
                self.index = index
            if changed:
                try:
                    self._on_change(data, index)
                except Exception as e:  # an answer we cannot use must not end this watcher
                    failures += 1
                    self.index = 0  # ask again in full, after the backoff
                    self._failed("consul_answer_unusable", e, failures, stop)
                    continue
                self.synced.set()
            elif clock() - started < self._min_interval:
                # An unchanged answer that came back quickly: do not spin.
                stop.wait(self._min_interval - (clock() - started))

    def _failed(self, event: str, error: Exception, failures: int, stop: threading.Event) -> None:
        self.healthy = False
        self.last_error = f"{error.__class__.__name__}: {error}"
        delay = min(self._backoff_max, 0.25 * 2**failures) * random.uniform(0.5, 1.0)
        self.log.warning(event, error=self.last_error, retry_in=round(delay, 2))
        stop.wait(delay)


class ConsulSource(Source):
    def __init__(
        self,
        *,
        name: str,
        store: Store,
        metrics: Metrics,
        log: Any,
        client: Any,
        options: Options,
        wait: float = 300.0,
        min_interval: float = 1.0,
        consistency: str = "default",
        namespace: str | None = None,
        partition: str | None = None,
        health_tag: str | None = None,
        allow_empty: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=name, store=store, metrics=metrics, log=log)
        self.client = client
        self.options = options
        self._wait = wait
        self._min_interval = min_interval
        self._extra: list[tuple[str, str]] = []
        if consistency in ("consistent", "stale"):
            self._extra.append((consistency, "1"))
        if namespace:
            self._extra.append(("ns", namespace))
        if partition:
            self._extra.append(("partition", partition))
        self._health_tag = health_tag
        self._clock = clock
        self._lock = threading.Condition()
        self._watchers: dict[str, tuple[BlockingQuery, threading.Event, threading.Thread]] = {}
        self._pending: dict[str, float] = {}
        self.table = ServiceUpstreams(
            source=name, metrics=metrics, log=self.log, allow_empty=allow_empty
        )
        self._entries: dict[str, list[Any]] = {}
        self._catalog: BlockingQuery | None = None

    # ------------------------------------------------------------------ fetch
    def _get(
        self, path: str, index: int, wait: str, extra: list[tuple[str, str]]
    ) -> tuple[int, Any]:
        params = [*self._extra, *extra]
        if index:
            params += [("index", str(index)), ("wait", wait)]
        result: tuple[int, Any] = self.client.http.get(CB.json(index=True), path, params=params)
        index_raw, data = result
        return int(index_raw or 0), data

    def _fetch_catalog(self, index: int, wait: str) -> tuple[int, Any]:
        tag, meta = self.options.tag, f"{self.options.meta_prefix}upstream"
        expr = f'"{tag}" in ServiceTags or "{meta}" in ServiceMeta'
        return self._get("/v1/catalog/services", index, wait, [("filter", expr)])

    def _fetch_health(
        self, service: str, every_instance: threading.Event
    ) -> Callable[[int, str], tuple[int, Any]]:
        passing = [("passing", "1")] if self.options.passing_only else []
        tag = [("tag", self._health_tag)] if self._health_tag else []

        def fetch(index: int, wait: str) -> tuple[int, Any]:
            # Without the server-side filter only for a service that drains (the
            # default path's query is exactly what it always was).
            extra = tag if every_instance.is_set() else passing + tag
            return self._get(f"/v1/health/service/{service}", index, wait, extra)

        return fetch

    # ----------------------------------------------------------------- loops
    def run(self, stop: threading.Event) -> None:
        self._catalog = BlockingQuery(
            fetch=self._fetch_catalog,
            on_change=self._catalog_changed,
            wait=self._wait,
            min_interval=self._min_interval,
            backoff_max=30.0,
            log=self.log.bind(query="catalog"),
        )
        catalog_thread = threading.Thread(
            target=self._catalog.run, args=(stop,), name="consul-catalog", daemon=True
        )
        catalog_thread.start()
        try:
            while not stop.is_set():
                self._process()
                self._report_health()
                with self._lock:
                    self._lock.wait_for(lambda: bool(self._pending) or stop.is_set(), timeout=1.0)
        finally:
            self._stop_watchers()
            catalog_thread.join(timeout=5)

    def _stop_watchers(self) -> None:
        # Watcher threads are daemons blocked in a query of at most `wait`: they
        # end on their own once it returns; shutdown does not wait for them.
        with self._lock:
            for _, service_stop, _ in self._watchers.values():
                service_stop.set()
            self._lock.notify_all()

    def stop(self) -> None:
        self._stop.set()
        self._stop_watchers()
        super().stop()

    def _catalog_changed(self, services: Any, index: int) -> None:
        if not isinstance(services, dict):
            raise ValueError("catalog answer is not a mapping")
        wanted = set(services)
        with self._lock:
            for service in list(self._watchers):
                if service not in wanted:  # opted out or deregistered everywhere
                    _, service_stop, _ = self._watchers.pop(service)
                    service_stop.set()
                    self._pending[service] = self._clock()
            for service in wanted - set(self._watchers):
                self._start_watcher(service)
            self._lock.notify_all()

    def _start_watcher(self, service: str) -> None:
        service_stop = threading.Event()
        # Set while the service's policy drains: the query returns every instance.
        # Until an answer shows the policy, the configured default decides.
        every_instance = threading.Event()
        if self.options.passing_only and self.options.traffic.drain_as_backup:
            every_instance.set()

        def changed(entries: Any, index: int) -> None:
            if not isinstance(entries, list):
                raise ValueError(f"health answer for {service} is not a list")
            with self._lock:
                if service in self._watchers:
                    self._entries[service] = entries
                    self._pending[service] = self._clock()
                    self._lock.notify_all()
            try:
                wanted = needs_every_instance(service, entries, self.options)
            except (AttributeError, TypeError, ValueError):  # entries of the wrong shape
                wanted = every_instance.is_set()
            if wanted != every_instance.is_set():
                # The policy changed (or was first read): ask again, at once, with the
                # other query. This answer stands meanwhile (a passing-only view is
                # still right about every served instance).
                if wanted:
                    every_instance.set()
                else:
                    every_instance.clear()
                query.refetch()
                self.log.debug("consul_health_query_switched", service=service, every=wanted)

        query = BlockingQuery(
            fetch=self._fetch_health(service, every_instance),
            on_change=changed,
            wait=self._wait,
            min_interval=self._min_interval,
            backoff_max=30.0,
            log=self.log.bind(service=service),
        )

        thread = threading.Thread(
            target=query.run, args=(service_stop,), name=f"consul-{service}", daemon=True
        )
        self._watchers[service] = (query, service_stop, thread)
        thread.start()

    def _process(self) -> None:
        with self._lock:
            catalog_synced = self._catalog is not None and self._catalog.synced.is_set()
            watchers_synced = all(q.synced.is_set() for q, _, _ in self._watchers.values())
            if not (catalog_synced and watchers_synced):
                return
            first = not self.synced
            if not self._pending and not first:
                return
            pending, self._pending = self._pending, {}
            keys = set(self._watchers) | set(self.table.upstreams) if first else set(pending)
            changed_at: dict[str, float] = {}
            for service in sorted(keys):
                name = self._recompute(service)
                if name is not None and service in pending:
                    changed_at[name] = pending[service]
            upstreams = self.table.by_name()
            held = self.table.held_names()
        self.publish(upstreams, changed_at_by_name=changed_at, held_empty=held)

    def _recompute(self, service: str) -> str | None:
        if service not in self._watchers:  # opted out, or deregistered everywhere
            self._entries.pop(service, None)
            self.table.drop(service)
            return None
        entries = self._entries.get(service, [])
        return self.table.update(service, build_upstream(service, entries, self.options))

    def _report_health(self) -> None:
        queries = [q for q, _, _ in self._watchers.values()]
        if self._catalog is not None:
            queries.append(self._catalog)
        self.report_health([(q.healthy, q.last_error) for q in queries], "query")

    def status(self) -> dict[str, Any]:
        out = super().status()
        with self._lock:
            out.update(
                catalog_index=self._catalog.index if self._catalog else None,
                watchers={
                    s: {"x_consul_index": q.index, "healthy": q.healthy, "error": q.last_error}
                    for s, (q, _, _) in self._watchers.items()
                },
                **self.table.status(),
            )
        return out


def client_from(cfg: ConsulClientConfig) -> Any:
    tls = cfg.tls
    return make_client(
        address=cfg.address,
        scheme=cfg.scheme,
        token=cfg.token,
        datacenter=cfg.datacenter,
        ca_file=str(tls.ca_file) if tls and tls.ca_file else None,
        cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
        key_file=str(tls.key_file) if tls and tls.key_file else None,
        connect_timeout=cfg.connect_timeout,
    )


def cb_json(*, index: bool = False) -> Any:
    """The library's JSON callback, wherever this library keeps it."""
    return CB.json(index=index)
