"""Shared machinery: simulated proxies, the syncer as a separate process, and figures.

The simulated proxies have the module's defaults (2 nginx workers, `dyups_shm_zone_size`
2 MiB, `dyups_read_msg_timeout` 1 s, no nginx.conf upstream). They run in K child
processes (`bench.simproc`; by default one per CPU, at most one per proxy), or with
K = 0 in the bench process, as they all did before. With `--proxy-url` there are no
simulators: the syncer drives the real dyups interfaces given, and `bench.httpwatch`
reads them over HTTP. The syncer runs as `python -m syncer.cli run -c CONFIG`, its own
process, so that its CPU time and memory can be read from /proc.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import yaml

from bench.gcpause import keep_collections_short
from bench.httpwatch import HttpWatch, KeyOf, addresses
from bench.simproc import (
    NO_BODY,
    Sim,
    SimProcesses,
    default_processes,
    events_since,
    process_cpu_seconds,
)
from bench.simproc import BenchError as BenchError
from syncer.proxy.dyups import ClientSettings, DyupsClient, ProxyError
from syncer.testing.dyups import AppliedEvent, DyupsSimulator

REPO = Path(__file__).resolve().parent.parent
POLL_INTERVAL = 0.005  # the file source's default poll_interval here: part of every lag
NGINX_WORKERS = 2
SHM_ZONE_SIZE = 2 * 1024 * 1024
READ_MSG_TIMEOUT = 1.0
STOP_TIMEOUT = 15.0  # after SIGTERM, before SIGKILL
APPLIED_LIMIT = 2_000_000  # events kept per simulator; far above what a run produces
_CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_DEBOUNCE = 0.1  # the syncer's default
# On real proxies every upstream name starts with this, and the syncer is told to own
# exactly these names (`owned_prefix`): upstreams of an earlier run, which dyups keeps
# until a reload, are the bench's to overwrite or delete, and no other upstream of the
# proxy is ever touched. (Without it a new run, with a new snapshot, would find its
# own names present and not created by it, and leave them alone.) `u` alone would
# claim any name starting with u. The simulators' names stay `u00000`, `u00001`, ….
REAL_PREFIX = "dyups-bench-"
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    proxies: int
    upstreams: int
    servers: int
    changes: int
    duration: float
    kick: bool
    debounce: float | None  # None: the syncer's default (100 ms)
    poll_interval: float = POLL_INTERVAL
    gap: float = 0.0  # change: idle pause before each change (not part of the lag)
    rate: float = 0.0  # consul-flips: health flips per second; churn: endpoint events
    rest: float = 0.0  # consul-flips: idle window after the flips; scale: after each sync
    sim_processes: int | None = None  # None: one per CPU, at most one per proxy; 0: none
    proxy_urls: tuple[str, ...] = ()  # real dyups proxies (--proxy-url): no simulators

    @property
    def name_prefix(self) -> str:
        return REAL_PREFIX if self.proxy_urls else ""

    @property
    def debounce_s(self) -> float:
        return DEFAULT_DEBOUNCE if self.debounce is None else self.debounce

    @property
    def processes(self) -> int:
        """Child processes for the simulators; 0: they run in the bench process."""
        if self.sim_processes is None:
            return default_processes(self.proxies)
        return min(self.sim_processes, self.proxies)

    def where_simulators(self) -> str:
        if self.proxy_urls:
            return "no simulators: real dyups proxies at the URLs given, read over HTTP"
        k = self.processes
        if k == 0:
            return "the simulators run in the bench process"
        return f"the simulators run in {k} child process{'es' if k > 1 else ''}, round-robin"


@dataclass
class Result:
    """One run's figures, printed as a markdown table."""

    title: str
    command: str
    setup: str
    rows: list[tuple[str, str]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", f"`{self.command}`", "", self.setup, ""]
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in self.rows]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- upstreams


def upstream_name(k: int, prefix: str = "") -> str:
    """`prefix`: `Options.name_prefix` (REAL_PREFIX on real proxies)."""
    return f"{prefix}u{k:05d}"


def base_servers(k: int, servers: int) -> list[str]:
    return [f"10.{k // 250}.{k % 250}.{j + 1}:8080" for j in range(servers)]


def base_spec(upstreams: int, servers: int, prefix: str = "") -> dict[str, list[str]]:
    return {upstream_name(k, prefix): base_servers(k, servers) for k in range(upstreams)}


def proxies_argument(opts: Options) -> str:
    """`--proxies N`, or `--proxy-url URL …`, for a scenario's command line."""
    if opts.proxy_urls:
        return "--proxy-url " + " ".join(opts.proxy_urls)
    return f"--proxies {opts.proxies}"


def tuning_flags(opts: Options) -> str:
    """The options every scenario's command line repeats when they differ from the
    defaults: ` --no-kick --debounce S --poll-interval S --sim-processes K`."""
    line = ""
    if not opts.kick:
        line += " --no-kick"
    if opts.debounce is not None:
        line += f" --debounce {opts.debounce:g}"
    if opts.poll_interval != POLL_INTERVAL:
        line += f" --poll-interval {opts.poll_interval:g}"
    if opts.sim_processes is not None:
        line += f" --sim-processes {opts.sim_processes}"
    return line


def upstream_yaml(name: str, servers: Sequence[str]) -> str:
    """One upstream's entry in the file source's YAML, rendered by hand (names and
    addresses here are plain scalars): `yaml.safe_dump` takes 30 ms for 2,000 servers
    and seconds for 100,000. `Bench.write_upstreams_text` writes the entries."""
    return f"  {name}:\n    servers:\n" + "".join(f"    - {s}\n" for s in servers)


# ----------------------------------------------------------------- figures


def percentile(ordered: Sequence[float], p: float) -> float:
    """The `p`th percentile (nearest rank) of values sorted ascending; 0 for none."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else 0.0


def percentiles_ms(values: Sequence[float]) -> str:
    """p50 / p90 / p99 / max in milliseconds (nearest rank)."""
    if not values:
        return "—"
    ordered = sorted(values)
    picks = (*(percentile(ordered, p) for p in (50, 90, 99)), ordered[-1])
    return " / ".join(f"{x * 1000:.1f}" for x in picks)


def spread(values: Sequence[float], digits: int = 0) -> str:
    """`mean (min–max)` over proxies."""
    if not values:
        return "—"
    mean = sum(values) / len(values)
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def machine() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = int(next(x.split()[1] for x in meminfo if x.startswith("MemTotal:")))
    return [
        f"CPUs (nproc): {len(os.sched_getaffinity(0))}, model name: {model}",
        f"memory: {mem_kib / 1024 / 1024:.1f} GiB",
        f"Python {platform.python_version()}, Linux {platform.release()}",
    ]


def code_version() -> str:
    """The commit measured, and whether syncer/ differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "syncer"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    return f"commit {head or '?'}" + (", syncer/ with uncommitted changes" if dirty else "")


# ----------------------------------------------------------------- applied events


class Tracker:
    """When each nginx worker of one proxy first applied a POST, by a key of the event.

    Reads the simulator's `applied` events incrementally; `key` returns None for
    events that do not matter.
    """

    def __init__(
        self,
        sim: Sim,
        key: Callable[[AppliedEvent], Hashable | None],
        start: int = 0,
        keep: str | None = None,
    ) -> None:
        """`start`: skip the simulator's first `start` events (see `applied_count`);
        `keep`: the part of each body `key` needs, as a regular expression (see
        `events_since`); None: whole bodies."""
        self.sim = sim
        self._key = key
        self._seen = start
        self._keep = keep
        self.first: dict[tuple[Hashable, int], float] = {}
        self.per_worker: Counter[int] = Counter()

    def update(self, wait: float = 0.0) -> Tracker:
        """Read the new events; if there are none, wait up to `wait` seconds for one."""
        events, total = events_since(self.sim, self._seen, wait, self._keep)
        if total >= APPLIED_LIMIT:
            raise BenchError("the simulator dropped applied events; run fewer changes")
        for event in events:
            key = self._key(event) if event.op == "post" else None
            if key is not None and (key, event.worker) not in self.first:
                self.first[(key, event.worker)] = event.at
                self.per_worker[event.worker] += 1
        self._seen = total
        return self

    def accepted_at(self, key: Hashable) -> float | None:
        """The first worker to apply it: the one that answered the POST."""
        times = [t for w in range(self.sim.workers) if (t := self.first.get((key, w))) is not None]
        return min(times) if times else None

    def everywhere_at(self, key: Hashable) -> float | None:
        """When the last nginx worker applied it, or None if one has not yet."""
        times = [self.first.get((key, w)) for w in range(self.sim.workers)]
        return None if None in times else max(t for t in times if t is not None)

    def holds(self, count: int) -> bool:
        return all(self.per_worker[w] >= count for w in range(self.sim.workers))


def applied_count(sim: Sim) -> int:
    """How many applied events the simulator holds (none cross the pipe)."""
    return events_since(sim, APPLIED_LIMIT)[1]


class Watch(Protocol):
    """When one proxy accepted each change, by key: a `Tracker` of a simulator's applied
    events, or an `HttpWatch` of a real proxy (see `Bench.watches`)."""

    def update(self, wait: float = 0.0) -> Watch: ...

    def accepted_at(self, key: Hashable) -> float | None: ...

    def everywhere_at(self, key: Hashable) -> float | None: ...


class PostLog:
    """The POSTs one simulated proxy accepted after this log was made, per upstream.

    Read incrementally from the simulator's `applied` events. Every nginx worker
    applies every POST once, and in order: a worker drains the shared queue before it
    answers a write of its own. So the k-th application of a name by each worker is
    the k-th POST, and the earliest of them is when that POST was accepted.
    """

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self._seen = events_since(sim, APPLIED_LIMIT)[1]  # no events: how many there are
        self._by_name: dict[str, dict[int, list[tuple[float, str]]]] = {}
        self.latest: dict[str, str] = {}  # the body last applied by any worker
        self.touched: set[str] = set()  # names applied since the caller last cleared it

    def update(self) -> PostLog:
        events, total = events_since(self.sim, self._seen)
        if total >= APPLIED_LIMIT:
            raise BenchError("the simulator dropped applied events; run fewer changes")
        for event in events:
            if event.op == "post":
                body = event.body or ""
                per_worker = self._by_name.setdefault(event.name, {})
                per_worker.setdefault(event.worker, []).append((event.at, body))
                self.latest[event.name] = body
                self.touched.add(event.name)
        self._seen = total
        return self

    def posts(self, name: str) -> list[tuple[float, str]]:
        """(accepted at, body) of each POST of `name`, in order."""
        per_worker = list(self._by_name.get(name, {}).values())
        count = max((len(applied) for applied in per_worker), default=0)
        return [min(applied[k] for applied in per_worker if len(applied) > k) for k in range(count)]


class OtherLoad:
    """CPU used by processes other than the bench and its children (the syncer), sampled
    from /proc every SAMPLE seconds while a scenario runs: other work on the machine."""

    SAMPLE = 2.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="other-load", daemon=True)
        self.samples: list[float] = []  # % of one core, per interval
        self.top: dict[str, float] = {}  # command → CPU seconds

    def __enter__(self) -> OtherLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.SAMPLE)

    @staticmethod
    def _ticks() -> dict[int, tuple[int, int]]:
        """pid → (utime + stime, ppid)."""
        out = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                except OSError:
                    continue
                out[int(entry)] = (int(fields[11]) + int(fields[12]), int(fields[1]))
        return out

    @staticmethod
    def _command(pid: int) -> str:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return "?"
        text = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        return re.sub(r"[`|]", "'", text)[:60] or f"pid {pid}"

    def _loop(self) -> None:
        me = os.getpid()
        before, then = self._ticks(), time.monotonic()
        while not self._stop.wait(self.SAMPLE):
            now, at = self._ticks(), time.monotonic()
            total = 0.0
            for pid, (ticks, ppid) in now.items():
                if pid == me or ppid == me:
                    continue
                # A process that started since the last sample used all its time since.
                used = (ticks - before.get(pid, (0, 0))[0]) / _CLK_TCK
                if used > 0:
                    total += used
                    command = self._command(pid)
                    self.top[command] = self.top.get(command, 0.0) + used
            self.samples.append(100 * total / (at - then))
            before, then = now, at

    def summary(self) -> str:
        if not self.samples:
            return "—"
        mean = sum(self.samples) / len(self.samples)
        text = f"{mean:.0f} % / {max(self.samples):.0f} %"
        ranked = sorted(self.top.items(), key=lambda item: -item[1])
        busy = [(cmd, sec) for cmd, sec in ranked[:2] if sec >= 1.0]
        if busy:
            text += "; most: " + ", ".join(f"`{cmd}` {sec:.0f} s" for cmd, sec in busy)
        return text


# ----------------------------------------------------------------- the syncer process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SyncerProcess:
    """`python -m syncer.cli run -c CONFIG`, stdout and stderr to a log file; `listen`:
    the config's `listen` address, where `metrics` and `state` read it."""

    listen = ""  # a stand-in process (a baseline) serves none

    def __init__(self, config: Path, log: Path, listen: str = "") -> None:
        self.log_path = log
        self.listen = listen
        env = {k: v for k, v in os.environ.items() if not k.startswith("DYUPS_SYNCER_")}
        with log.open("wb") as out:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "syncer.cli", "run", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"the syncer exited with {code}; its log ends with:\n{tail}")

    def cpu_seconds(self) -> float:
        """utime + stime of every thread, from /proc/PID/stat."""
        return process_cpu_seconds(self.pid)

    def _status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise BenchError(f"no {key} in /proc/{self.pid}/status")

    def peak_rss_mib(self) -> float:
        return self._status_kib("VmHWM") / 1024

    def rss_mib(self) -> float:
        return self._status_kib("VmRSS") / 1024

    def status_mib(self, key: str) -> float:
        """A `kB` line of /proc/PID/status (VmRSS, VmHWM, RssAnon, …), in MiB."""
        return self._status_kib(key) / 1024

    def _get(self, path: str) -> bytes:
        if not self.listen:
            raise BenchError("this process serves no /metrics or /state")
        with urllib.request.urlopen(f"http://{self.listen}{path}", timeout=10) as answer:
            body: bytes = answer.read()
            return body

    def metrics(self) -> Metrics:
        """Its /metrics, now."""
        return Metrics(self._get("/metrics").decode())

    def state(self) -> dict[str, Any]:
        """Its /state, now."""
        state: dict[str, Any] = json.loads(self._get("/state"))
        return state

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)

    def log_summary(self) -> str:
        """Warnings and errors the syncer logged, by event."""
        counts: Counter[str] = Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry: Any = json.loads(line)
                counts[f"{entry['level']} {entry['event']}"] += 1
            except (ValueError, KeyError, TypeError):
                counts["(not JSON)"] += 1
        if not counts:
            return "0"
        return ", ".join(f"{name} ×{n}" for name, n in counts.most_common())


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """Samples of a Prometheus text exposition."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                name, _, labels = series.partition("{")
                self.samples.append((name, dict(_LABEL.findall(labels)), float(value)))

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sum(
            value
            for n, have, value in self.samples
            if n == name and all(have.get(k) == v for k, v in labels.items())
        )


def answer_times_row(metrics: Metrics) -> tuple[str, str]:
    """How long the simulated proxies took to answer, as the syncer timed it: the time
    a worker waits for the simulators, which share a GIL with the other simulators of
    their process (and with K = 0 with the bench's driver and fake)."""
    durations = []
    for method in ("POST", "GET"):
        n = metrics.total("dyups_syncer_request_duration_seconds_count", method=method)
        spent = metrics.total("dyups_syncer_request_duration_seconds_sum", method=method)
        durations.append(f"{method} {1000 * spent / n:.2f} ms ({n:.0f})" if n else f"{method} —")
    return (
        "proxy answers as the syncer timed them (since start): mean (count)",
        "; ".join(durations) + " (a POST's time includes its verify GET; kick GETs untimed)",
    )


# ----------------------------------------------------------------- one run


def simulator_settings(seed: int) -> dict[str, Any]:
    """The keyword arguments of one proxy's `DyupsSimulator`."""
    return {
        "workers": NGINX_WORKERS,
        "shm_zone_size": SHM_ZONE_SIZE,
        "read_msg_timeout": READ_MSG_TIMEOUT,
        "seed": seed,
        "applied_limit": APPLIED_LIMIT,
    }


class Bench:
    """One run: a temp dir, N simulated proxies and, once started, a syncer process (or
    several: replicas, see `start_syncer`).

    The simulators run in `processes` child processes (None: one per CPU, at most one
    per proxy), or in this one with 0. With `urls` (real dyups proxies) there are no
    simulators and `proxies` is ignored. Leaving the `with` block stops the syncer
    (SIGTERM, then SIGKILL), then the simulators, then removes the temp dir, also on
    errors.
    """

    def __init__(
        self, proxies: int, processes: int | None = None, urls: Sequence[str] = ()
    ) -> None:
        self._urls = list(urls)
        self._proxies = 0 if urls else proxies
        self.processes = default_processes(proxies) if processes is None else processes
        self.processes = min(self.processes, self._proxies)
        self._stack = contextlib.ExitStack()
        self.sims: list[Sim] = []
        self.sim_processes: SimProcesses | None = None
        self.syncer: SyncerProcess | None = None  # the first started
        self.syncers: list[SyncerProcess] = []  # every one started, in order
        self.dir = Path(".")
        self.upstreams_file = Path("upstreams.yaml")
        self._counted_from: Metrics | None = None  # real proxies: see `reset_counts`

    def __enter__(self) -> Bench:
        keep_collections_short()
        try:
            tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="dyups-bench-"))
            self.dir = Path(tmp)
            self.upstreams_file = self.dir / "upstreams.yaml"
            check_interfaces(self._urls)
            settings = [simulator_settings(i) for i in range(self._proxies)]
            if self.processes:
                children = SimProcesses(settings, self.processes)
                self._stack.callback(children.close)
                self.sim_processes = children
                self.sims.extend(children.sims)
            else:
                for kwargs in settings:
                    sim = DyupsSimulator(**kwargs)
                    self._stack.callback(sim.stop)
                    self.sims.append(sim.start())
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def enter_context(self, cm: AbstractContextManager[T]) -> T:
        """Enter `cm` now; it is left with the run, after the syncer stops (LIFO)."""
        return self._stack.enter_context(cm)

    @property
    def real(self) -> bool:
        """The proxies are real dyups interfaces (`--proxy-url`), not simulators."""
        return bool(self._urls)

    @property
    def urls(self) -> list[str]:
        return self._urls or [sim.url for sim in self.sims]

    def write_upstreams_text(self, entries: Iterable[str], path: Path | None = None) -> float:
        """`write_upstreams` from entries rendered by `upstream_yaml`, to `path` (default:
        the file source's file); returns time.monotonic() just before the rename."""
        path = path or self.upstreams_file
        tmp = path.with_suffix(".tmp")
        tmp.write_text("upstreams:\n" + "".join(entries))
        stamp = time.monotonic()
        os.replace(tmp, path)
        return stamp

    def write_upstreams(self, spec: dict[str, list[str]]) -> float:
        """Write the file source atomically; returns time.monotonic() just before the rename."""
        doc = {"upstreams": {name: {"servers": servers} for name, servers in spec.items()}}
        tmp = self.upstreams_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        stamp = time.monotonic()
        os.replace(tmp, self.upstreams_file)
        return stamp

    def start_syncer(
        self,
        opts: Options,
        sources: list[dict[str, Any]] | None = None,
        *,
        replica: str = "",
        settings: Mapping[str, Any] | None = None,
    ) -> SyncerProcess:
        """Start a syncer; `sources` replaces the default file source, `settings` are
        added to its config (e.g. `leader_election`). Each `replica` (a name) gets a
        directory of its own for its config, log and snapshot, and a port of its own;
        without one they are in the run's directory. The first started is `self.syncer`
        (`metrics` reads it); `check_alive` watches them all."""
        if sources is None:
            file = {"type": "file", "path": str(self.upstreams_file)}
            sources = [{**file, "poll_interval": opts.poll_interval}]
        home = self.dir / replica if replica else self.dir
        home.mkdir(exist_ok=True)
        listen = f"127.0.0.1:{_free_port()}"
        config: dict[str, Any] = {
            "sources": sources,
            "proxies": {
                "static": [
                    {"url": url, "name": proxy_label(i), "kick": opts.kick}
                    for i, url in enumerate(self.urls)
                ]
            },
            "snapshot_path": str(home / "snapshot.json"),
            "listen": listen,
            "log": {"level": "warning", "format": "json"},
        }
        if opts.debounce is not None:
            config["debounce"] = opts.debounce
        if self.real:
            # See REAL_PREFIX. The breaker stays for what the bench does not own; an
            # earlier, larger run's upstreams (all prefixed) may go at once.
            config["owned_prefix"] = REAL_PREFIX
            config["max_delete_fraction"] = 1.0
        config.update(settings or {})
        path = home / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        syncer = SyncerProcess(path, home / "syncer.log", listen)
        self._stack.callback(syncer.stop)
        self.syncers.append(syncer)
        self.syncer = self.syncer or syncer
        return syncer

    def check_alive(self) -> None:
        """BenchError if a syncer or a simulator process has exited. (`syncer` may be a
        stand-in the scenario set itself: a baseline.)"""
        for syncer in dict.fromkeys([self.syncer, *self.syncers]):
            if syncer is not None:
                syncer.check_alive()
        if self.sim_processes is not None:
            self.sim_processes.check_alive()

    def wait(
        self, predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.02
    ) -> None:
        """Poll `predicate` every `every` seconds until it holds; BenchError on timeout or
        a dead syncer."""
        deadline = time.monotonic() + timeout
        while not predicate():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)

    def wait_sim(self, sim: Sim, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait on the simulator's change notifications in this process; a simulator in
        a child process is polled every 50 ms."""
        deadline = time.monotonic() + timeout
        while not sim.wait_until(lambda _sim: predicate(), min(1.0, timeout)):
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")

    def wait_tracker(
        self, tracker: Watch, done: Callable[[], bool], timeout: float, what: str
    ) -> None:
        """Until `done()` holds, reading the tracker's new events as they come (the wait
        is in the simulator's process: no polling delay), or a watch's new answers."""
        deadline = time.monotonic() + timeout
        tracker.update()
        while not done():
            self.check_alive()
            if (left := deadline - time.monotonic()) <= 0:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
            tracker.update(wait=min(1.0, left))

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.check_alive()
            time.sleep(min(1.0, left))

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time so far of the bench process, and of the simulator processes."""
        children = self.sim_processes.cpu_seconds() if self.sim_processes is not None else 0.0
        return time.process_time(), children

    def cpu_rows(
        self, since: tuple[float, float], inside: str, outside: str, suffix: str = ""
    ) -> list[tuple[str, str]]:
        """The bench's CPU since `since` (from `cpu_seconds`). `inside` names what the bench
        process runs with the simulators in it, `outside` without them."""
        own, children = (now - then for now, then in zip(self.cpu_seconds(), since, strict=True))
        if self.real:
            return [(f"bench process CPU ({outside}, HTTP watches){suffix}", f"{own:.2f} s")]
        if self.sim_processes is None:
            return [(f"bench process CPU ({inside}){suffix}", f"{own:.2f} s")]
        return [
            (f"bench process CPU ({outside}){suffix}", f"{own:.2f} s"),
            (f"simulator processes CPU ({self.processes} processes){suffix}", f"{children:.2f} s"),
        ]

    def wait_synced(self, names: set[str], timeout: float, every: float = 0.02) -> list[Tracker]:
        """Until every nginx worker of every proxy applied a POST of each name."""
        trackers = [
            Tracker(sim, lambda e: e.name if e.name in names else None, keep=NO_BODY)
            for sim in self.sims
        ]
        self.wait(
            lambda: all(t.update().holds(len(names)) for t in trackers),
            timeout,
            f"{len(names)} upstreams on every worker of every proxy",
            every,
        )
        return trackers

    def wait_in_sync(
        self, spec: dict[str, list[str]], timeout: float, every: float = 0.02
    ) -> float:
        """Until every proxy holds `spec`; returns the seconds from the syncer's start.

        Simulators: until every nginx worker of every proxy applied a POST of each name
        (`wait_synced`), to the last application. Real proxies: until each one's
        `/detail` (head: `/list`) shows exactly `spec` among the bench's names, to the
        read that showed it on the last proxy (read every `every` seconds).
        """
        assert self.syncer is not None, "start the syncer first"
        if not self.real:
            trackers = self.wait_synced(set(spec), timeout, every)
            return max(max(t.first.values()) for t in trackers) - self.syncer.started
        want = {name: tuple(sorted(servers)) for name, servers in spec.items()}
        pending = [DyupsClient(ClientSettings(url=url)) for url in self.urls]
        clients = list(pending)

        def served() -> bool:
            pending[:] = [client for client in pending if not _serves(client, want)]
            return not pending

        try:
            self.wait(served, timeout, f"{len(spec)} upstreams on every proxy", every)
        finally:
            for client in clients:
                client.close()
        return time.monotonic() - self.syncer.started

    @property
    def synced_means(self) -> str:
        """What `wait_in_sync` times: from the syncer's start until …"""
        if self.real:
            return "a read of every proxy shows every upstream"
        return "every nginx worker of every proxy holds every upstream"

    def watches(
        self,
        sim_key: Callable[[AppliedEvent], Hashable | None],
        http_key: KeyOf,
        keep: str | None = None,
    ) -> list[Watch]:
        """One per proxy, to read when it accepted each change made from now on: a
        `Tracker` of each simulator's events from now on (`sim_key`, `keep`: see
        `Tracker`), or an `HttpWatch` of each real proxy (`http_key`), reading until the
        run ends (what the proxy serves now is no change)."""
        if not self.real:
            return [Tracker(sim, sim_key, applied_count(sim), keep) for sim in self.sims]
        watches: list[Watch] = []
        for url in self.urls:
            watch = HttpWatch(url, http_key)
            self._stack.callback(watch.close)
            watches.append(watch.start())
        return watches

    def reset_counts(self) -> None:
        """Count requests from now on (`proxy_rows`): the simulators' stats are reset;
        real proxies keep none, so the syncer's own counts are read now, and subtracted."""
        if self.real:
            self._counted_from = self.metrics()
        for sim in self.sims:
            sim.reset_stats()

    def metrics(self) -> Metrics:
        """The (first) syncer's /metrics, now."""
        assert self.syncer is not None, "start the syncer first"
        return self.syncer.metrics()

    def proxy_rows(self, syncer: SyncerProcess) -> list[tuple[str, str]]:
        """Request counts from the simulators' stats (real proxies: the syncer's own
        counts, see `reset_counts`), and the syncer's memory."""
        if self.real:
            return self._real_proxy_rows(syncer)
        stats = [sim.stats for sim in self.sims]
        return [
            ("POSTs per proxy, mean (min–max)", spread([s.posts for s in stats])),
            ("DELETEs per proxy, mean (min–max)", spread([s.deletes for s in stats])),
            ("GETs per proxy, mean (min–max)", spread([s.gets for s in stats])),
            ("queue overflows (`alert` 500s), all proxies", str(sum(s.alerts for s in stats))),
            ("syncer peak RSS (VmHWM)", f"{syncer.peak_rss_mib():.1f} MiB"),
        ]

    def _real_proxy_rows(self, syncer: SyncerProcess) -> list[tuple[str, str]]:
        now, then = self.metrics(), self._counted_from or Metrics("")

        def per_proxy(name: str, **labels: str) -> list[float]:
            return [
                now.total(name, proxy=label, **labels) - then.total(name, proxy=label, **labels)
                for label in map(proxy_label, range(len(self.urls)))
            ]

        requests = "dyups_syncer_requests_total"
        return [
            (
                "POSTs per proxy (the syncer's count), mean (min–max)",
                spread(per_proxy(requests, method="POST")),
            ),
            (
                "DELETEs per proxy (the syncer's count), mean (min–max)",
                spread(per_proxy(requests, method="DELETE")),
            ),
            (
                "queue overflows (`alert` 500s the syncer got), all proxies",
                f"{sum(per_proxy('dyups_syncer_proxy_degraded_total')):.0f}",
            ),
            ("syncer peak RSS (VmHWM)", f"{syncer.peak_rss_mib():.1f} MiB"),
        ]


def proxy_label(i: int) -> str:
    """The name of the i-th proxy in the syncer's config: its metrics' `proxy` label."""
    return f"p{i}"


def check_interfaces(urls: Iterable[str]) -> None:
    """Real proxies: stop at once, naming the URL, if one is not a dyups interface that
    answers, rather than time out waiting for the syncer to sync it."""
    for url in urls:
        client = DyupsClient(ClientSettings(url=url))
        try:
            client.detect()
        except ProxyError as e:
            raise BenchError(f"--proxy-url {url}: {e}") from e
        finally:
            client.close()


def _serves(client: DyupsClient, want: dict[str, tuple[str, ...]]) -> bool:
    """The proxy holds exactly `want` among the bench's names (REAL_PREFIX)."""
    try:
        observed = client.observe()
    except ProxyError:
        return False  # not yet: the wait's deadline tells
    held = {n: addresses(u) for n, u in observed.items() if n.startswith(REAL_PREFIX)}
    return held == want


def real_proxy_rows(watches: Sequence[Watch]) -> list[tuple[str, str]]:
    """What the table must say about real proxies: which, and how finely they were read."""
    http = [w for w in watches if isinstance(w, HttpWatch)]
    if not http:
        return []
    flavours = ", ".join(sorted({str(w.flavour or "flavour unknown") for w in http}))
    intervals = [x for w in http for x in w.intervals()]
    return [
        (
            "proxies",
            f"real dyups proxies ({flavours}), --proxy-url " + " ".join(w.url for w in http),
        ),
        (
            "read interval achieved per proxy, answer to answer: p50 / p90 / p99 / max (ms); "
            "an accepted time is the first answer showing the change, so late by up to one",
            percentiles_ms(intervals) + f" ({len(intervals) + len(http)} reads)",
        ),
        ("failed reads of the proxies", str(sum(w.errors for w in http))),
    ]
