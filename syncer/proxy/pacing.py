"""Write pacing by bytes, so the module's shared-memory message queue never overflows.

A queued change keeps its body in the zone (`dyups_shm_zone_size`) until every
nginx worker applied it on its timer (`dyups_read_msg_timeout`). So whatever is
written within one timer period must fit in the zone. A token bucket with
`burst + rate × period ≤ zone × SAFETY` keeps every such window inside it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# Per queued message the module spends more than the body (header, name, slab
# rounding): 611-byte bodies overflowed a 2 MiB zone at the 1,772nd write, i.e.
# about 1,180 bytes each. Count this much on top of every body.
MESSAGE_OVERHEAD = 640
SAFETY = 0.8  # leave a fifth of the zone for other writers and timer jitter


@dataclass(frozen=True, slots=True)
class Budget:
    rate: float  # bytes per second
    burst: float  # bytes

    @classmethod
    def for_zone(cls, shm_zone_size: int, read_msg_timeout: float) -> Budget:
        usable = shm_zone_size * SAFETY
        return cls(rate=usable / (2 * read_msg_timeout), burst=usable / 2)


DEFAULT_BUDGET = Budget.for_zone(2 * 1024 * 1024, 1.0)  # the module's defaults


def message_cost(body: str | bytes) -> int:
    return len(body) + MESSAGE_OVERHEAD


def kick_count(workers: int, miss_probability: float = 0.001) -> int:
    """GETs on fresh connections so every nginx worker is reached with high
    probability: about `workers × ln(workers / miss_probability)` (coupon collector);
    16 for 2 workers, which the measurement found sufficient."""
    if workers <= 1:
        return 1
    return math.ceil(workers * math.log(workers / miss_probability))


class TokenBucket:
    def __init__(
        self,
        budget: Budget,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self._clock = clock
        self._tokens = budget.burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.budget.burst, self._tokens + (now - self._stamp) * self.budget.rate)
        self._stamp = now

    def delay_for(self, cost: float) -> float:
        """Seconds to wait before spending `cost` (a cost above the burst waits for a
        full bucket and then drives it negative, so huge bodies still go through)."""
        self._refill()
        need = min(cost, self.budget.burst)
        if self._tokens >= need:
            return 0.0
        return (need - self._tokens) / self.budget.rate

    def spend(self, cost: float) -> None:
        self._refill()
        self._tokens -= cost

    def acquire(self, cost: float, stop: threading.Event) -> bool:
        """Wait until `cost` may be written, then spend it; False if `stop` was set."""
        while (delay := self.delay_for(cost)) > 0:
            if stop.wait(delay):
                return False
        self.spend(cost)
        return True

    def drain(self) -> None:
        """After a queue overflow: assume the zone is full."""
        self._refill()
        self._tokens = min(self._tokens, 0.0)


class FairSlots:
    """A counting semaphore that serves waiters in arrival order.

    `threading.Semaphore` lets a releasing thread take the slot straight back: a
    worker kicking back to back starved the others (some proxies were kicked a
    twentieth as often). Here a released slot goes to the longest waiter.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._free = slots
        self._waiters: deque[threading.Event] = deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    def acquire(self, timeout: float) -> bool:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        if turn.wait(timeout):
            return True
        with self._lock:
            if turn.is_set():  # handed over between the timeout and the lock
                return True
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # the slot passes on, never freed
            else:
                self._free += 1
