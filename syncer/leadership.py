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
from collections.abc import Callable, Iterable
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


class Tenure:
    """Holding one lease or lock, as the writers see it: held from a successful acquire
    or renewal until it is lost, given up, or `renew_deadline` passes without another
    renewal. The deadline is judged at every `held()` (before every write), so a holder
    cut off from the API stops writing before anyone else can take over (the others
    wait for `lease_duration`, which is longer)."""

    def __init__(
        self,
        *,
        renew_deadline: float,
        clock: Callable[[], float],
        on_change: Callable[[bool, str], None] = lambda held, why: None,
    ) -> None:
        self._renew_deadline = renew_deadline
        self._clock = clock
        self._on_change = on_change  # (held, why): metrics and logs of the owner
        self._lock = threading.Lock()
        self._held = False
        self._last_renew = 0.0

    @property
    def active(self) -> bool:
        """Held as of the last renewal, the deadline not judged (to know what to release)."""
        return self._held

    def held(self) -> bool:
        self.check_deadline()
        return self._held

    def renewed(self) -> None:
        with self._lock:
            self._last_renew = self._clock()
            gained, self._held = not self._held, True
        if gained:
            self._on_change(True, "")

    def check_deadline(self) -> None:
        if self._held and self._clock() - self._last_renew > self._renew_deadline:
            self.lose("renew deadline passed")

    def lose(self, why: str) -> None:
        if self.end():
            self._on_change(False, why)

    def end(self) -> bool:
        """Stop holding without telling the owner (it says what it does itself);
        returns whether it was held."""
        with self._lock:
            was, self._held = self._held, False
        return was


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
        self._tenure = Tenure(
            renew_deadline=config.renew_deadline, clock=clock, on_change=self._tenure_changed
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.leader.set(0)
        metrics.shards.set(1)  # one lock: one shard, every proxy in it

    def is_leader(self) -> bool:
        """Checked before every write: also false once the renew deadline has passed."""
        return self._tenure.held()

    def may_write(self, proxy: str) -> bool:
        """Whether this replica may write to `proxy` now: the leader writes them all."""
        return self.is_leader()

    def status(self, proxies: Iterable[str] = ()) -> dict[str, Any]:
        """For /state (`proxies`: for the sharded election, which shows each one's shard)."""
        return {"identity": self.identity, "leading": self.is_leader()}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._release()
        self._tenure.end()
        self._set_gauges(held=False)

    def _run(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Hand leadership over on shutdown (subclasses)."""

    def _renewed(self) -> None:
        self._tenure.renewed()

    def _check_deadline(self) -> None:
        self._tenure.check_deadline()

    def _lose(self, why: str) -> None:
        self._tenure.lose(why)

    def _tenure_changed(self, held: bool, why: str) -> None:
        self._set_gauges(held=held)
        if held:
            self.log.info("leader_elected")
        else:
            self.log.warning("leadership_lost", reason=why)

    def _set_gauges(self, *, held: bool) -> None:
        self._metrics.leader.set(int(held))
        self._metrics.shards_held.set(int(held))
