"""Fault injection: fixtures and helpers shared by the scenarios in tests/faults.

Every scenario asserts convergence (each worker of each simulated proxy holds the
desired state) and counts what was lost, which must be 0. Repair times are
measured and recorded (printed in pytest's terminal summary, and written as JSON
to `$DYUPS_FAULT_REPORT` when set), never asserted: only convergence within a
generous bound is.

`DYUPS_FAULT_TRIALS`, when set, is how many times every repeated scenario injects
its fault (kill -9 trials, lifecycle faults, network fault/heal cycles, conflict
rounds, queue-full alerts); unset, each scenario uses a small default sized for CI
(`trials(default)`: 20 kill -9 trials, 2 to 6 repeats of the others).
`DYUPS_FAULT_SEED` replays a run (the seed is recorded).

`record(..., samples={...})` keeps the raw per-trial samples: the report holds
them, with their n, p50, p99 and max (nearest rank: with fewer than 100 samples
the p99 is the maximum, which the report says).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncer.model import Upstream
from syncer.testing.dyups import DyupsSimulator
from tests.integration.conftest import (
    STATIC_VIEW,
    WAIT,
    Env,
    eventually,
    make_env,
    metric,
    sim_view,
    want_view,
)

__all__ = [
    "REPAIR_BOUND",
    "SEED",
    "TRIALS",
    "WAIT",
    "Daemon",
    "FlakyForwarder",
    "View",
    "client_sockets",
    "differences",
    "eventually",
    "expected",
    "lost",
    "make_env",
    "metric",
    "record",
    "sim_view",
    "summarize",
    "syncer_threads",
    "trials",
    "want_view",
    "write_daemon_config",
]

_TRIALS_SET = os.environ.get("DYUPS_FAULT_TRIALS") or None


def trials(default: int) -> int:
    """How many times a repeated scenario injects its fault: $DYUPS_FAULT_TRIALS when
    set, else `default` (each scenario's CI size)."""
    return int(_TRIALS_SET) if _TRIALS_SET else default


TRIALS = trials(20)  # the kill -9 tests
# How long a repair may take before a scenario fails: ten resync intervals.
REPAIR_BOUND = 10.0
SEED = int(os.environ.get("DYUPS_FAULT_SEED") or random.SystemRandom().randrange(2**31))

View = dict[str, tuple[Any, ...]]  # upstream name → sorted server tuples (see sim_view)


# --------------------------------------------------------------------------- measurements

MEASURED: list[dict[str, Any]] = []
PERCENTILES = "nearest rank: p = the ceil(p/100 * n)-th smallest sample (p99 = max when n < 100)"


def _rank(ordered: Sequence[float], p: int) -> float:
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


def summarize(samples: Sequence[float | None]) -> dict[str, Any]:
    """n, p50, p99 and max of `samples` (None entries are skipped), by nearest rank.
    `p99_is_max` says when the p99 is only the largest sample (n < 100)."""
    ordered = sorted(x for x in samples if x is not None)
    if not ordered:
        return {"n": 0}
    n = len(ordered)
    return {
        "n": n,
        "p50": round(_rank(ordered, 50), 4),
        "p99": round(_rank(ordered, 99), 4),
        "max": round(ordered[-1], 4),
        "p99_is_max": math.ceil(99 * n / 100) == n,
    }


def record(
    scenario: str,
    *,
    samples: Mapping[str, Sequence[float | None]] | None = None,
    details: Sequence[Mapping[str, Any]] | None = None,
    **values: Any,
) -> None:
    """Keep a measurement for the terminal summary and $DYUPS_FAULT_REPORT.

    `values`: counts and settings (by convention `trials`, `converged`, `lost`);
    `samples`: name → one value per trial (raw, in trial order), summarized by
    `summarize`; `details`: one dict per trial, for the JSON report only."""
    entry: dict[str, Any] = {"scenario": scenario, **values}
    if samples:
        entry["samples"] = {
            k: [None if x is None else round(x, 4) for x in v] for k, v in samples.items()
        }
        entry["stats"] = {k: summarize(v) for k, v in samples.items()}
    if details:
        entry["details"] = [dict(d) for d in details]
    MEASURED.append(entry)
    print(f"[fault] {_line(entry)}")


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _line(entry: Mapping[str, Any]) -> str:
    skip = {"scenario", "samples", "stats", "details"}
    shown = [f"{k}={_fmt(v)}" for k, v in entry.items() if k not in skip]
    for name, st in entry.get("stats", {}).items():
        if st["n"]:
            p99 = "max" if st["p99_is_max"] else f"{st['p99']:.3f}"
            shown.append(f"{name}: n={st['n']} p50={st['p50']:.3f} p99={p99} max={st['max']:.3f}")
    return f"{entry['scenario']}: " + " ".join(shown)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MEASURED:
        return
    terminalreporter.write_sep("-", f"fault injection measurements (seed {SEED})")
    for entry in MEASURED:
        terminalreporter.write_line(_line(entry))
    target = os.environ.get("DYUPS_FAULT_REPORT")
    if target:
        report = {
            "seed": SEED,
            "trials": _TRIALS_SET,  # $DYUPS_FAULT_TRIALS (null: each scenario's default)
            "percentiles": PERCENTILES,
            "measured": MEASURED,
        }
        Path(target).write_text(json.dumps(report, indent=1))


# --------------------------------------------------------------------------- convergence


def expected(
    desired: dict[str, Upstream], sim: DyupsSimulator, foreign: View | None = None
) -> View:
    """What every worker of `sim` must hold: nginx.conf upstreams (classic), upstreams
    someone else created (`foreign`), and the desired ones."""
    out = want_view(desired, STATIC_VIEW if sim.flavour == "classic" else None)
    return {**(foreign or {}), **out}


def differences(sim: DyupsSimulator, want: View) -> list[str]:
    """Per worker, what differs from `want`: `missing` and `changed` entries are lost
    state; `extra` ones are left behind (e.g. an owned upstream never deleted)."""
    found = []
    for worker in range(sim.workers):
        have = sim_view(sim, worker)
        for name in sorted(want.keys() | have.keys()):
            if name not in have:
                found.append(f"w{worker} missing {name}")
            elif name not in want:
                found.append(f"w{worker} extra {name}")
            elif have[name] != want[name]:
                found.append(f"w{worker} changed {name}")
    return found


def lost(found: list[str]) -> int:
    return sum(1 for d in found if " missing " in d or " changed " in d)


# --------------------------------------------------------------------------- leaks


def _socket_inodes() -> set[int]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _tcp_remote_ports() -> dict[int, int]:
    """inode → remote port of every TCP socket of this network namespace."""
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                out[int(parts[9])] = int(parts[2].rsplit(":", 1)[1], 16)
    return out


def client_sockets(port: int) -> int:
    """Sockets this process holds open towards `port` (the syncer's side of its
    connections to a proxy listening there; TIME_WAIT entries hold no descriptor)."""
    remote = _tcp_remote_ports()
    return sum(1 for inode in _socket_inodes() if remote.get(inode) == port)


_HELPER_THREADS = re.compile(r"dyups-sim-|flaky-|churn|\(_serve\)|MainThread")


def syncer_threads() -> set[threading.Thread]:
    """The live threads that belong neither to the simulators nor to the test's own
    helpers: the syncer's. Compare them as sets (a thread of an earlier test may
    still be ending: only threads that appear are a leak)."""
    return {t for t in threading.enumerate() if not _HELPER_THREADS.search(t.name)}


# --------------------------------------------------------------------------- raw socket


class FlakyForwarder:
    """A raw TCP forwarder in front of a simulator, to break connections mid-answer.

    `mode`: "pass" forwards both ways; "half-rst" forwards the request, sends back
    only the first half of the first chunk of the answer, then resets the
    connection (RST); "half-fin" does the same but closes it normally (FIN). The
    proxy has acted on the request; its answer is cut in the middle. (After an RST,
    Linux drops the received bytes the client has not read yet: it sees only
    ECONNRESET, as when dyups closes a DELETE's connection on a busy trylock.)
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        # Cut only the answers to requests with these methods (None: every answer).
        self.only: set[bytes] | None = None
        self.cut = 0  # answers cut in half
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._socks: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._accept = threading.Thread(target=self._accept_loop, name="flaky-accept", daemon=True)
        self._accept.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            with contextlib.suppress(OSError):
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                with self._lock:
                    self._socks |= {client, upstream}
                thread = threading.Thread(
                    target=self._pump, args=(client, upstream), name="flaky-conn", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        method = b""
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        method = data.split(b" ", 1)[0]
                        upstream.sendall(data)
                    elif self.mode.startswith("half") and (
                        self.only is None or method in self.only
                    ):
                        client.sendall(data[: max(1, len(data) // 2)])
                        with self._lock:
                            self.cut += 1
                        if self.mode == "half-rst":
                            linger = struct.pack("ii", 1, 0)
                            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                        return
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
                with self._lock:
                    self._socks.discard(sock)

    def open_sockets(self) -> int:
        with self._lock:
            return len(self._socks)

    def stop(self) -> None:
        self._stop.set()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)
        self._listener.close()


@pytest.fixture
def forwarder() -> Iterator[Any]:
    made: list[FlakyForwarder] = []

    def factory(target_port: int) -> FlakyForwarder:
        fwd = FlakyForwarder(target_port)
        made.append(fwd)
        return fwd

    yield factory
    for fwd in made:
        fwd.stop()


# --------------------------------------------------------------------------- the daemon


def write_daemon_config(env: Env, path: Path | None = None, **extra: Any) -> Path:
    """A configuration for `dyups-syncer run` against `env`, with the fast timers of
    the in-process tests (debounce 0, probe 100 ms, resync 1 s, read_msg_timeout 50 ms)."""
    cfg: dict[str, Any] = {
        "sources": [{"type": "file", "path": str(env.file), "poll_interval": "20ms"}],
        "proxies": {
            "static": [
                {
                    "url": s.url,
                    "name": f"p{i}",
                    "read_msg_timeout": "50ms",
                    "read_timeout": "1s",
                    "connect_timeout": "500ms",
                }
                for i, s in enumerate(env.sims)
            ]
        },
        "snapshot_path": str(env.snapshot),
        "debounce": 0,
        "probe_interval": "100ms",
        "resync_interval": "1s",
        "listen": "127.0.0.1:0",
        "log": {"format": "json", "level": "info"},
    }
    cfg.update(extra)
    target = path or env.tmp / "config.yaml"
    target.write_text(yaml.safe_dump(cfg))
    return target


class Daemon:
    """`dyups-syncer run` as a subprocess, its output appended to one log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned = 0

    def spawn(self) -> None:
        with open(self.log, "ab") as out:
            out.write(f"--- spawn {self.spawned}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "syncer.cli", "run", "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.spawned += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(20)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(20)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def daemons() -> Iterator[Any]:
    made: list[Daemon] = []

    def factory(config: Path, log: Path) -> Daemon:
        daemon = Daemon(config, log)
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.stop()
