"""What both leader-election backends share: who we are, and how the leader hands its
ownership records to the next leader (compressed JSON)."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

from syncer.config import LeaderElectionConfig
from syncer.metrics import Metrics


def encode_payload(data: dict[str, Any]) -> str:
    """JSON, compressed: 2,000 upstream names fit in a few KiB of annotation."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 9)).decode()


def decode_payload(text: str) -> dict[str, Any]:
    data = json.loads(zlib.decompress(base64.b64decode(text, validate=True)))
    if not isinstance(data, dict):
        raise ValueError("ownership annotation is not a JSON object")
    return data


def default_identity() -> str:
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class Elector:
    """The part both backends share: leading or not, judged again at every write.

    A subclass runs `_run` in its thread and calls `_renewed()` after every
    successful acquire or renew, `_lose(why)` when it knows it lost."""

    thread_name = "leader-election"

    def __init__(
        self,
        *,
        config: LeaderElectionConfig,
        metrics: Metrics,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
        payload: Callable[[], dict[str, Any]] = dict,
        on_payload: Callable[[dict[str, Any]], None] = lambda _: None,
    ) -> None:
        self.cfg = config
        self.identity = config.identity or default_identity()
        self._metrics = metrics
        self.log = log
        self._clock = clock
        # The leader publishes what it owns; followers read it, so the next leader
        # manages the same upstreams (it does not see them as foreign).
        self._payload = payload
        self._on_payload = on_payload
        self._leading = threading.Event()
        self._last_renew = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.leader.set(0)

    def is_leader(self) -> bool:
        """Checked before every write: also false once the renew deadline has passed."""
        if not self._leading.is_set():
            return False
        if self._clock() - self._last_renew > self.cfg.renew_deadline:
            self._lose("renew deadline passed")
            return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._release()
        self._leading.clear()
        self._metrics.leader.set(0)

    def _run(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Hand leadership over on shutdown (subclasses)."""

    def _renewed(self) -> None:
        self._last_renew = self._clock()
        if not self._leading.is_set():
            self._leading.set()
            self._metrics.leader.set(1)
            self.log.info("leader_elected")

    def _check_deadline(self) -> None:
        if self._leading.is_set() and self._clock() - self._last_renew > self.cfg.renew_deadline:
            self._lose("renew deadline passed")

    def _lose(self, why: str) -> None:
        if self._leading.is_set():
            self._leading.clear()
            self._metrics.leader.set(0)
            self.log.warning("leadership_lost", reason=why)
