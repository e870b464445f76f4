"""The one small interface every source implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from typing import Any

from syncer.metrics import Metrics
from syncer.model import Upstream
from syncer.state import PublishResult, Store


class Source(ABC):
    """A thread that publishes complete results into the store.

    `synced`: the first complete read is done. `healthy`: the last read worked.
    A source never deletes by failing: on error it keeps its last good result.
    """

    def __init__(self, *, name: str, store: Store, metrics: Metrics, log: Any) -> None:
        self.name = name
        self.store = store
        self.metrics = metrics
        self.log = log.bind(source=name)
        self.healthy = False
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def synced(self) -> bool:
        return self.store.synced(self.name)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._guarded, name=f"source-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _guarded(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.run(self._stop)
                return
            except Exception as e:  # a bug must not end the source for good
                failures += 1
                self.failed("crash", f"{e.__class__.__name__}: {e}")
                self.log.exception("source_crashed", failures=failures)
                self._stop.wait(min(30.0, 0.5 * 2**failures))

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Read and publish until `stop` is set."""

    # helpers for subclasses
    def publish(
        self,
        upstreams: Mapping[str, Upstream],
        *,
        changed_at: float | None = None,
        changed_at_by_name: Mapping[str, float] | None = None,
        held_empty: Collection[str] = (),
    ) -> PublishResult:
        result = self.store.publish(
            self.name,
            upstreams,
            changed_at=changed_at,
            changed_at_by_name=changed_at_by_name,
            held_empty=held_empty,
        )
        self.healthy = True
        self.last_error = ""
        self.metrics.source_up.labels(self.name).set(1)
        self.metrics.source_empty_held.labels(self.name).set(1 if result.held_empty else 0)
        if result.held_empty:
            self.log.warning(
                "source_empty_ignored",
                hint="the source returned no upstream at all; keeping the last known ones "
                "(set allow_empty: true to allow this)",
            )
        for name in result.collisions:
            self.metrics.source_errors.labels(self.name, "name_collision").inc()
            self.log.error(
                "upstream_name_collision",
                upstream=name,
                hint="another source already provides this upstream",
            )
        if result.changed or result.removed:
            self.log.info(
                "source_published",
                changed=len(result.changed),
                removed=len(result.removed),
                upstreams=len(upstreams),
            )
        return result

    def failed(self, reason: str, message: str) -> None:
        self.healthy = False
        self.last_error = message
        self.metrics.source_up.labels(self.name).set(0)
        self.metrics.source_errors.labels(self.name, reason).inc()

    def report_health(self, parts: list[tuple[bool, str]], reason: str) -> None:
        """For sources made of several loops: healthy when every loop is; an error
        is counted once per distinct error text."""
        healthy = bool(parts) and all(ok for ok, _ in parts)
        errors = "; ".join(error for ok, error in parts if not ok and error)
        if healthy:
            if not self.healthy:
                self.metrics.source_up.labels(self.name).set(1)
                self.last_error = ""
        elif errors and errors != self.last_error:
            self.failed(reason, errors)
        self.healthy = healthy

    def status(self) -> dict[str, Any]:
        return {"synced": self.synced, "healthy": self.healthy, "last_error": self.last_error}
