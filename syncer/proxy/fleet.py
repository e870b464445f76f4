"""The set of proxy workers, which can change at run time (discovered proxies).

Each worker has its own stop event, so one can leave without disturbing the
others; a worker that leaves takes its metric series with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from syncer.metrics import Metrics
from syncer.proxy.worker import ProxyWorker
from syncer.state import Store

Target = TypeVar("Target")
MakeWorker = Callable[[str, Any, threading.Event], ProxyWorker]


class Fleet(Generic[Target]):
    def __init__(
        self,
        *,
        make_worker: Callable[[str, Target, threading.Event], ProxyWorker],
        store: Store,
        metrics: Metrics,
        log: Any,
        join_timeout: float = 10.0,
    ) -> None:
        self._make = make_worker
        self._store = store
        self._metrics = metrics
        self.log = log
        self._join_timeout = join_timeout
        self._lock = threading.Lock()
        self._workers: dict[str, tuple[ProxyWorker, threading.Event, Target, str]] = {}
        self._started = False

    @property
    def workers(self) -> list[ProxyWorker]:
        with self._lock:
            return [w for w, _, _, _ in self._workers.values()]

    def start(self) -> None:
        with self._lock:
            self._started = True
            workers = [w for w, _, _, _ in self._workers.values()]
        for worker in workers:
            worker.start()

    def update(self, group: str, targets: Mapping[str, Target]) -> None:
        """Make the workers of `group` exactly `targets` (label → target): start new
        ones (their first round is a full reconcile), stop those that left."""
        leaving: list[tuple[str, ProxyWorker, threading.Event]] = []
        joining: list[ProxyWorker] = []
        with self._lock:
            for label, (worker, stop, target, g) in list(self._workers.items()):
                if g == group and (label not in targets or targets[label] != target):
                    leaving.append((label, worker, stop))
                    del self._workers[label]
            for label, target in targets.items():
                if label in self._workers:
                    continue
                stop = threading.Event()
                worker = self._make(label, target, stop)
                self._workers[label] = (worker, stop, target, group)
                joining.append(worker)
            started = self._started
        for label, worker, stop in leaving:
            stop.set()
            self._store.wake()
            worker.join(self._join_timeout)
            self._metrics.forget_proxy(label)
            self._store.forget_proxy(label)
            self.log.info("proxy_removed", proxy=label)
        for worker in joining:
            if started:
                worker.start()
            self.log.info("proxy_added", proxy=worker.label, url=worker.client.url)

    def stop_all(self) -> None:
        with self._lock:
            entries = list(self._workers.values())
        for _, stop, _, _ in entries:
            stop.set()
        self._store.wake()
        for worker, _, _, _ in entries:
            worker.join(self._join_timeout)
