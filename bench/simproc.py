"""Simulated proxies in child processes, as real proxies are separate nginx processes.

In one Python process the simulators would share one GIL with each other and with the
bench's driver and fakes: every simulated proxy's answer would wait for all of them.
`SimProcesses` starts K child processes (`multiprocessing`, spawn context: the bench
has threads, so no fork; and a spawned child's parent is the bench, which the "other
processes' CPU" figure leaves out, where a forkserver's children would count) and hosts
the simulators round-robin, proxy i in process i mod K. The bench gets one `RemoteSim`
per proxy, with the part of `DyupsSimulator`'s surface it uses.

Each child answers calls on a plain Pipe, one at a time: (simulator, method, arguments)
→ (ok, result or traceback). A Manager would need a wrapper class anyway (the surface
has properties and a waiter that takes a callable) and adds a server thread per
connection; with a Pipe the failure modes are plain. A child reads EOF when the bench
goes away, also when it is killed, and stops its simulators; the bench reads EOF when a
child dies, and raises BenchError. Children are daemons: multiprocessing also ends them
at exit.

Applied events cross the pipe once each: `events_since(sim, seen, wait)` returns only
the events after the first `seen`, and waits in the child, up to `wait` seconds, until
there is one; so a waiter wakes as soon as a worker applies something, without polling.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

from bench.gcpause import keep_collections_short
from syncer.testing.dyups import AppliedEvent, DyupsSimulator, SimServer, SimStats

START_TIMEOUT = 60.0  # the children import and start their simulators
ANSWER_SLACK = 30.0  # a call's answer may take this long beyond its own wait
STOP_TIMEOUT = 5.0  # a child stopping its simulators, before SIGKILL
_CLK_TCK = os.sysconf("SC_CLK_TCK")
NO_BODY = "(?!)"  # `events_since(keep=...)`: a pattern that never matches, so no body at all


class BenchError(Exception):
    """The run cannot go on (the syncer or a simulator process died, a wait timed out).

    Defined here, the bottom layer of the bench; `bench.harness` exports it."""


def default_processes(proxies: int) -> int:
    return min(os.cpu_count() or 1, proxies)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def events_since(
    sim: Sim, seen: int, wait: float = 0.0, keep: str | None = None
) -> tuple[list[AppliedEvent], int]:
    """The simulator's applied events after the first `seen`, and how many it holds;
    if there are none yet, waits up to `wait` seconds for one.

    `keep`, a regular expression: each event of a simulator in a child process crosses
    the pipe with its body cut to the first match ("" without one; `NO_BODY` never
    matches). The bench looks at most for a marker in a body, and 200 proxies × 2,000
    upstreams of whole bodies would be hundreds of MB of pipe traffic competing for the
    CPU with the syncer. A simulator in this process hands out its events as they are."""
    if isinstance(sim, RemoteSim):
        return sim.events_since(seen, wait, keep)
    if wait > 0:
        sim.wait_until(lambda s: len(s.applied) > seen, wait)
    events = sim.applied
    return events[seen:], len(events)


def _cut_bodies(events: list[AppliedEvent], keep: str) -> list[AppliedEvent]:
    pattern = re.compile(keep)
    out = []
    for e in events:
        match = pattern.search(e.body) if e.body else None
        out.append(AppliedEvent(e.at, e.worker, e.op, e.name, match[0] if match else ""))
    return out


# ----------------------------------------------------------------- the child


def _serve(conn: Connection, settings: list[dict[str, Any]]) -> None:
    """A child: start the simulators, then answer calls until the bench closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bench's: it closes the pipe
    sims: list[DyupsSimulator] = []
    try:
        for kwargs in settings:
            sims.append(DyupsSimulator(**kwargs).start())
        keep_collections_short()
        conn.send((True, [(sim.url, sim.port, sim.workers) for sim in sims]))
        while True:
            index, method, args = conn.recv()
            try:
                sim = sims[index]
                if method == "events_since":
                    seen, wait, keep = args
                    events, total = events_since(sim, seen, wait)
                    result: Any = (events if keep is None else _cut_bodies(events, keep), total)
                else:
                    attribute = getattr(sim, method)
                    result = attribute(*args) if callable(attribute) else attribute
            except Exception:
                conn.send((False, traceback.format_exc()))
            else:
                conn.send((True, result))
    except (EOFError, BrokenPipeError):
        pass  # the bench closed the pipe, or is gone
    finally:
        for sim in sims:
            sim.stop()


# ----------------------------------------------------------------- the bench side


class _Child:
    """One child process and the bench's end of its pipe; calls are serialized."""

    def __init__(self, context: SpawnContext, number: int, settings: list[dict[str, Any]]):
        self.name = f"simulator process {number}"
        self._conn, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(theirs, settings), name=f"dyups-sim-{number}", daemon=True
        )
        self.process.start()
        theirs.close()  # the child holds the only other end: its exit is our EOF
        self._lock = threading.Lock()

    def exited(self) -> str | None:
        """How the child ended, or None while it runs."""
        code = self.process.exitcode
        if code is None:
            return None
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        return f"{self.name} (pid {self.process.pid}) {how}; its traceback, if any, is above"

    def receive(self, timeout: float, what: str) -> Any:
        try:
            if not self._conn.poll(timeout):
                raise BenchError(f"{self.name} did not answer {what} within {timeout:g} s")
            ok, value = self._conn.recv()
        except (EOFError, OSError) as e:
            self.process.join(STOP_TIMEOUT)
            raise BenchError(self.exited() or f"{self.name} closed its pipe") from e
        if not ok:
            raise BenchError(f"{what} failed in {self.name}:\n{value}")
        return value

    def call(self, index: int, method: str, args: tuple[Any, ...], wait: float) -> Any:
        what = f"{method}() of its simulator {index}"
        with self._lock:
            try:
                self._conn.send((index, method, args))
            except OSError as e:
                self.process.join(STOP_TIMEOUT)
                raise BenchError(self.exited() or f"{self.name} closed its pipe") from e
            return self.receive(wait + ANSWER_SLACK, what)

    def close(self) -> None:
        self._conn.close()  # the child reads EOF, stops its simulators and exits


class RemoteSim:
    """A simulator in a child process: the part of `DyupsSimulator`'s surface the bench
    uses. Every read is a call to the child; `applied` moves every event, so loops read
    `events_since` instead."""

    def __init__(self, child: _Child, index: int, url: str, port: int, workers: int) -> None:
        self._child = child
        self._index = index
        self.url = url
        self.port = port
        self.workers = workers

    def call(self, method: str, *args: Any, wait: float = 0.0) -> Any:
        """Call `method` of the simulator (or read the attribute, if not callable)."""
        return self._child.call(self._index, method, args, wait)

    @property
    def stats(self) -> SimStats:
        stats: SimStats = self.call("stats")
        return stats

    def reset_stats(self) -> None:
        self.call("reset_stats")

    @property
    def applied(self) -> list[AppliedEvent]:
        events: list[AppliedEvent] = self.call("applied")
        return events

    def clear_applied(self) -> None:
        self.call("clear_applied")

    def events_since(
        self, seen: int, wait: float = 0.0, keep: str | None = None
    ) -> tuple[list[AppliedEvent], int]:
        answer: tuple[list[AppliedEvent], int] = self.call(
            "events_since", seen, wait, keep, wait=wait
        )
        return answer

    def upstreams(self, worker: int | None = None) -> dict[str, list[SimServer]]:
        held: dict[str, list[SimServer]] = self.call("upstreams", worker)
        return held

    def reload(self) -> None:
        self.call("reload")

    def restart(self) -> None:
        self.call("restart")

    def stop(self) -> None:
        self.call("stop")

    def wait_until(
        self, predicate: Callable[[RemoteSim], bool], timeout: float, *, recheck: float = 0.05
    ) -> bool:
        """Poll `predicate(self)`, evaluated here, every `recheck` seconds; False on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(recheck, left))
        return True


Sim = DyupsSimulator | RemoteSim


class SimProcesses:
    """`processes` child processes hosting one simulator per entry of `settings` (the
    keyword arguments of `DyupsSimulator`), round-robin; `sims` has one handle per
    proxy, in order. `close()` ends the children, and must be called."""

    def __init__(self, settings: Sequence[Mapping[str, Any]], processes: int) -> None:
        if not 1 <= processes <= len(settings):
            raise ValueError("need between 1 and one process per simulator")
        context = multiprocessing.get_context("spawn")
        shares = [list(range(p, len(settings), processes)) for p in range(processes)]
        self._children: list[_Child] = []
        self.sims: list[RemoteSim] = []
        try:
            for p, share in enumerate(shares):
                self._children.append(_Child(context, p, [dict(settings[i]) for i in share]))
            handles: dict[int, RemoteSim] = {}
            for child, share in zip(self._children, shares, strict=True):
                started = child.receive(START_TIMEOUT, "its start")
                for slot, (i, (url, port, workers)) in enumerate(zip(share, started, strict=True)):
                    handles[i] = RemoteSim(child, slot, url, port, workers)
            self.sims = [handles[i] for i in range(len(settings))]
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [child.process.pid or 0 for child in self._children]

    def check_alive(self) -> None:
        for child in self._children:
            if (exited := child.exited()) is not None:
                raise BenchError(exited)

    def cpu_seconds(self) -> float:
        """CPU time of the children so far (0 for one that has gone)."""
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += process_cpu_seconds(pid)
        return total

    def close(self) -> None:
        for child in self._children:
            child.close()
        for child in self._children:
            child.process.join(STOP_TIMEOUT)
            if child.process.exitcode is None:
                child.process.kill()
                child.process.join(STOP_TIMEOUT)
