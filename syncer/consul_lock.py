"""Leader election outside Kubernetes: Consul's documented recipe, a lock on a KV key
held by a session with a TTL.

The leader renews its session every `retry_period` (TTL = `lease_duration`); a leader
that cannot renew within `renew_deadline` stops writing at once. Followers try to
acquire and otherwise block on the key until it changes. The key's value carries what
the leader owns, so the next leader manages the same upstreams. On shutdown the lock
is released (no lock-delay applies to an explicit release) and the session destroyed.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from syncer.config import LeaderElectionConfig
from syncer.leadership import decode_payload, default_identity, encode_payload
from syncer.metrics import Metrics
from syncer.sources.consul import ERRORS, cb_json


class ConsulLock:
    def __init__(
        self,
        *,
        config: LeaderElectionConfig,
        client: Any,
        metrics: Metrics,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
        payload: Callable[[], dict[str, Any]] = dict,
        on_payload: Callable[[dict[str, Any]], None] = lambda _: None,
    ) -> None:
        self.cfg = config
        self.key = config.consul.key
        self.identity = config.identity or default_identity()
        self._client = client
        self._metrics = metrics
        self.log = log.bind(lock=self.key, identity=self.identity)
        self._clock = clock
        self._payload = payload
        self._on_payload = on_payload
        self._session: str | None = None
        self._leading = threading.Event()
        self._last_renew = 0.0
        self._index = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.leader.set(0)

    def is_leader(self) -> bool:
        if not self._leading.is_set():
            return False
        if self._clock() - self._last_renew > self.cfg.renew_deadline:
            self._lose("renew deadline passed")
            return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="consul-lock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self._session:
            try:
                if self._leading.is_set():
                    self._put(f"/v1/kv/{self.key}", [("release", self._session)], self._value())
                self._put(f"/v1/session/destroy/{self._session}", [], "")
                self.log.info("lock_released")
            except ERRORS as e:
                self.log.warning("lock_release_failed", error=str(e))
        self._leading.clear()
        self._metrics.leader.set(0)

    # ------------------------------------------------------------------ HTTP
    def _put(self, path: str, params: list[tuple[str, str]], data: str) -> Any:
        return self._client.http.put(cb_json(), path, params=params, data=data)

    def _value(self) -> str:
        return json.dumps({"holder": self.identity, "ownership": encode_payload(self._payload())})

    def _create_session(self) -> str:
        ttl = max(10, round(self.cfg.lease_duration))  # Consul's minimum TTL is 10s
        body = {
            "Name": f"dyups-syncer {self.identity}",
            "TTL": f"{ttl}s",
            "Behavior": "release",
            "LockDelay": f"{round(self.cfg.consul.lock_delay)}s",
        }
        created = self._put("/v1/session/create", [], json.dumps(body))
        return str(created["ID"])

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except ERRORS as e:
                self.log.warning("lock_request_failed", error=str(e))
                self._stop.wait(self.cfg.retry_period)
            if (
                self._leading.is_set()
                and self._clock() - self._last_renew > self.cfg.renew_deadline
            ):
                self._lose("renew deadline passed")

    def _round(self) -> None:
        if self._session is None:
            self._session = self._create_session()
        elif not self._renew():
            self._lose("session expired")
            self._session = None
            return
        acquired = bool(
            self._put(f"/v1/kv/{self.key}", [("acquire", self._session)], self._value())
        )
        if acquired:
            self._last_renew = self._clock()
            if not self._leading.is_set():
                self._leading.set()
                self._metrics.leader.set(1)
                self.log.info("leader_elected")
            self._stop.wait(self.cfg.retry_period)
            return
        if self._leading.is_set():
            self._lose("lock held by another session")
        self._follow()

    def _renew(self) -> bool:
        try:
            self._put(f"/v1/session/renew/{self._session}", [], "")
        except ERRORS as e:
            if "404" in str(e) or "not found" in str(e).lower():
                return False
            raise
        return True

    def _follow(self) -> None:
        """Block on the key until it changes (or a retry period passes), reading the
        leader's ownership on the way."""
        params = [("index", str(self._index)), ("wait", f"{max(1, round(self.cfg.retry_period))}s")]
        index, entries = self._client.http.get(
            cb_json(index=True), f"/v1/kv/{self.key}", params=params if self._index else []
        )
        new_index = int(index or 0)
        self._index = 0 if new_index < self._index or new_index <= 0 else new_index
        for entry in entries or []:
            self._read_payload(entry)

    def _read_payload(self, entry: dict[str, Any]) -> None:
        raw = entry.get("Value")
        if not raw:
            return
        try:
            value = json.loads(base64.b64decode(raw))
            self._on_payload(decode_payload(value["ownership"]))
        except (ValueError, KeyError, TypeError) as e:
            self.log.warning("lock_ownership_unreadable", error=str(e))

    def _lose(self, why: str) -> None:
        if self._leading.is_set():
            self._leading.clear()
            self._metrics.leader.set(0)
            self.log.warning("leadership_lost", reason=why)
