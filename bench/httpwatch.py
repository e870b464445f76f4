"""Real dyups proxies (`--proxy-url`), watched over HTTP.

With real proxies there are no simulators, so no applied events: the bench cannot
see an nginx worker apply a POST. An `HttpWatch` per proxy reads, in a thread, what
the proxy serves, on one keep-alive connection, a new read `POLL_GAP` after the start
of the last, and records the first answer in which each change shows.

It reads with the syncer's own client, `DyupsClient.observe()`: the same flavour
detection (`GET /detail` 200 or 204: classic; 404: head) and the same parsers
(`/detail` on classic, `/list` on head), rather than a second reading of the format.

What a time means: an answer that shows a change the previous answer did not was
produced after the proxy accepted the POST, and the POST came after the previous read
was sent. The time kept is this answer's arrival: an upper bound of the acceptance,
late by at most one poll interval and one answer. The interval achieved is reported
with the figures. What the other nginx workers apply cannot be seen: on classic dyups
a worker applies the shared queue before it answers any GET on the interface, so the
reads themselves propagate changes, as the syncer's kick does.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable, Mapping

from bench.simproc import BenchError
from syncer.model import ObservedUpstream
from syncer.proxy.dyups import ClientSettings, DyupsClient, Flavour, ProxyError

# Reads start at most this often: without a floor a watch spins as fast as loopback
# answers (a few thousand reads a second), taking a core from the syncer it measures.
# 5 ms is also the file source's poll interval in the bench, already part of every lag.
POLL_GAP = 0.005
READ_TIMEOUT = 5.0
ERROR_PAUSE = 0.1  # after a failed read
DOWN_AFTER = 10.0  # no answer for this long: the run stops (BenchError)

# (upstream name, its server addresses as served, sorted) → the key of a change, or
# None for a state that is no change the bench made.
KeyOf = Callable[[str, tuple[str, ...]], Hashable | None]


def addresses(upstream: ObservedUpstream) -> tuple[str, ...]:
    return tuple(sorted(s.address for s in upstream.servers or ()))


class HttpWatch:
    """When each change first showed in one real proxy's answers.

    The first answer is the baseline: what it shows is no change. `start()` begins the
    reads, `close()` ends them; the scenario reads `accepted_at` as it does a `Tracker`'s.
    """

    def __init__(self, url: str, key: KeyOf, *, gap: float = POLL_GAP) -> None:
        self.url = url
        self._key = key
        self._gap = gap
        settings = ClientSettings(url=url, read_timeout=READ_TIMEOUT, max_idle_connections=1)
        self._client = DyupsClient(settings)
        self._answered = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch {url}", daemon=True)
        self._held: dict[str, ObservedUpstream] | None = None  # the last answer
        self._first: dict[Hashable, float] = {}
        self.answers: list[float] = []  # time.monotonic() at each answer's arrival
        self.errors = 0
        self.last_error = ""
        self._failing_since: float | None = None

    def start(self) -> HttpWatch:
        """Start the reads; returns once the baseline is read, so that any change made
        from then on is one the watch sees come."""
        self._failing_since = time.monotonic()  # until the first answer
        self._thread.start()
        with self._answered:
            if not self._answered.wait_for(lambda: bool(self.answers), DOWN_AFTER):
                raise BenchError(
                    f"{self.url} did not answer within {DOWN_AFTER:g} s: {self.last_error}"
                )
        return self

    def close(self) -> None:
        self._stop.set()
        with self._answered:
            self._answered.notify_all()
        if self._thread.is_alive():
            self._thread.join(READ_TIMEOUT + 1)
        self._client.close()

    @property
    def flavour(self) -> Flavour | None:
        return self._client.flavour

    # ------------------------------------------------------------ the thread
    def _loop(self) -> None:
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = time.monotonic() + self._gap
            try:
                observed = self._client.observe()
            except ProxyError as e:
                self._failed(e)
                due += ERROR_PAUSE
                continue
            self._record(observed, time.monotonic())

    def _record(self, observed: Mapping[str, ObservedUpstream], at: float) -> None:
        with self._answered:
            if self._held is not None:
                for name, upstream in observed.items():
                    # The client reuses its parse of an upstream whose text did not
                    # change: mostly the same object, and the test costs next to nothing.
                    if self._held.get(name) == upstream:
                        continue
                    key = self._key(name, addresses(upstream))
                    if key is not None and key not in self._first:
                        self._first[key] = at
            self._held = dict(observed)
            self.answers.append(at)
            self._failing_since = None
            self._answered.notify_all()

    def _failed(self, error: ProxyError) -> None:
        with self._answered:
            self.errors += 1
            self.last_error = str(error)
            if self._failing_since is None:
                self._failing_since = time.monotonic()

    # ------------------------------------------------------------ the reader's side
    def update(self, wait: float = 0.0) -> HttpWatch:
        """Wait up to `wait` seconds for the next answer; BenchError if the proxy has not
        answered for DOWN_AFTER seconds."""
        with self._answered:
            count = len(self.answers)
            if wait > 0:
                self._answered.wait_for(
                    lambda: len(self.answers) > count or self._stop.is_set(), wait
                )
            failing = self._failing_since
        if failing is not None and time.monotonic() - failing > DOWN_AFTER:
            raise BenchError(
                f"{self.url} has not answered for {DOWN_AFTER:g} s "
                f"({self.errors} failed reads; last: {self.last_error or 'none yet'})"
            )
        return self

    def accepted_at(self, key: Hashable) -> float | None:
        """When the first answer showing this change arrived."""
        with self._answered:
            return self._first.get(key)

    def everywhere_at(self, key: Hashable) -> float | None:
        """Never known: which nginx worker answered, and what the others hold, is not
        visible from outside."""
        return None

    def intervals(self) -> list[float]:
        """Seconds between consecutive answers: the resolution of `accepted_at`."""
        with self._answered:
            times = list(self.answers)
        return [b - a for a, b in itertools.pairwise(times)]
