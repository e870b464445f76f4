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
import time
from collections.abc import Callable
from typing import Any

from syncer.config import LeaderElectionConfig
from syncer.leadership import Elector, decode_payload, encode_payload
from syncer.metrics import Metrics
from syncer.sources.consul import ERRORS, cb_json


class ConsulLock(Elector):
    thread_name = "consul-lock"

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
        super().__init__(
            config=config,
            metrics=metrics,
            log=log,
            clock=clock,
            payload=payload,
            on_payload=on_payload,
        )
        self.key = config.consul.key
        self._client = client
        self.log = log.bind(lock=self.key, identity=self.identity)
        self._session: str | None = None
        self._index = 0

    def _release(self) -> None:
        if not self._session:
            return
        try:
            if self._tenure.active:
                self._put(f"/v1/kv/{self.key}", [("release", self._session)], self._value())
            self._put(f"/v1/session/destroy/{self._session}", [], "")
            self.log.info("lock_released")
        except ERRORS as e:
            self.log.warning("lock_release_failed", error=str(e))

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
            self._check_deadline()

    def _round(self) -> None:
        if self._session is None:
            self._session = self._create_session()
        elif not self._renew():
            self._lose("session expired")
            self._session = None
            return
        try:
            answer = self._put(f"/v1/kv/{self.key}", [("acquire", self._session)], self._value())
        except ERRORS as e:
            if "invalid session" in str(e):  # it expired between renew and acquire
                self._session = None
                self._lose("session expired")
                return
            raise
        acquired = answer is True
        if acquired:
            self._renewed()
            self._stop.wait(self.cfg.retry_period)
            return
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
