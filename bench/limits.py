"""`limits`: how many proxies × upstreams one syncer drives with a p99 lag of at most 1 s.

For each size of a grid (default: proxies 10, 25, 50, 100, 200 × upstreams 500, 2,000;
`--proxies` and `--upstreams` lists, or `--grid 10x500,50x2000`), with a fresh syncer
and fresh simulators:

1. the cold sync: U upstreams × S servers (`--servers`, 10) to P empty proxies;
2. `SETTLE` of rest, then the load: `--rate` (20) single-upstream changes a second for
   `--duration` (30 s), open loop: change i is written at i / rate seconds whether or
   not the earlier ones have arrived. It replaces the first server of upstream i mod U
   with an address unique to it (`scenarios.marker`), and must reach every proxy;
3. the wait until every proxy has accepted every change (at most `CATCH_UP_TIMEOUT`).

The lag of a change runs from the stamp before its file's rename until the last proxy
accepted it: its first nginx worker applied the POST (simulators), or a read showed it
(real proxies, `bench.httpwatch`). A later change of the same upstream that reaches a
proxy first carries the earlier one with it (only when U < rate × duration). A size
passes when every change reached every proxy and the p99 is at most `TARGET`. Sizes run
smallest first, upstreams-major; a size is skipped once one no larger in either
dimension failed, as it would fail too.

The upstreams are spread over file sources of `FILE_UPSTREAMS` each, so that a change
rewrites, and the syncer re-reads, 100 upstreams and not all U: one file of
2,000 × 10 takes the file source about 0.3 s to parse, and 20 changes a second would
measure YAML parsing rather than how many proxies × upstreams the syncer drives.

The simulators share the machine's cores with the syncer and the bench: the limit found
is a lower bound for real nginx proxies, which answer in C on machines of their own.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.baselines.scenario import Table
from bench.harness import (
    Bench,
    BenchError,
    Options,
    Watch,
    answer_times_row,
    base_servers,
    base_spec,
    check_interfaces,
    percentile,
    percentiles_ms,
    proxies_argument,
    real_proxy_rows,
    tuning_flags,
    upstream_yaml,
)
from bench.scenarios import (
    MARKER_PORT,
    MARKER_WATCH,
    MAX_CHANGES,
    SETTLE,
    marker,
    proxies_setup,
)

DEFAULT_PROXIES = (10, 25, 50, 100, 200)
DEFAULT_UPSTREAMS = (500, 2000)
MAX_PROXIES = 500  # --proxies for limits (100 elsewhere)
TARGET = 1.0  # seconds: the p99 lag a size must stay within
FILE_UPSTREAMS = 100  # upstreams per file source
CATCH_UP_TIMEOUT = 60.0  # after the last change, until every proxy accepted every change
SYNC_CHECK = 0.25  # seconds between checks of the cold sync (simulators: timed by events)
CHECK_EVERY = 1.0  # the driver checks that the syncer still runs this often


@dataclass(frozen=True)
class LimitsOptions(Options):
    grid: tuple[tuple[int, int], ...] = ()  # (proxies, upstreams); `proxies`, `upstreams`: largest


def cold_timeout(proxies: int, upstreams: int) -> float:
    """For the cold sync: a minute, and 2 ms per POST (the syncer and the simulators
    share the CPUs; a POST costs them well under that)."""
    return 60.0 + proxies * upstreams / 500


@dataclass
class Size:
    """One size's figures, in table order; `verdict` goes first."""

    proxies: int
    upstreams: int
    rows: list[tuple[str, str]] = field(default_factory=list)
    passed: bool = False
    verdict: str = ""

    @property
    def label(self) -> str:
        return f"{self.proxies} × {self.upstreams:,}"


# ----------------------------------------------------------------- the upstreams


class Files:
    """The upstreams, spread over file sources of FILE_UPSTREAMS each (see the module doc)."""

    def __init__(self, directory: Path, upstreams: int, servers: int, prefix: str) -> None:
        self.servers = servers
        self.spec = base_spec(upstreams, servers, prefix)
        self.names = list(self.spec)
        self._entries = {name: upstream_yaml(name, s) for name, s in self.spec.items()}
        count = math.ceil(upstreams / FILE_UPSTREAMS)
        self.paths = [directory / f"upstreams-{f:03d}.yaml" for f in range(count)]

    def sources(self, poll_interval: float) -> list[dict[str, Any]]:
        return [
            {"type": "file", "path": str(path), "poll_interval": poll_interval}
            for path in self.paths
        ]

    def write(self, bench: Bench, f: int) -> float:
        """Write file `f`; returns time.monotonic() just before its rename."""
        names = self.names[f * FILE_UPSTREAMS : (f + 1) * FILE_UPSTREAMS]
        return bench.write_upstreams_text((self._entries[n] for n in names), self.paths[f])

    def change(self, bench: Bench, i: int) -> float:
        """Change i (`changed`); returns the stamp before its file's rename."""
        k, servers = changed(i, len(self.names), self.servers)
        name = self.names[k]
        self.spec[name] = servers
        self._entries[name] = upstream_yaml(name, servers)
        return self.write(bench, k // FILE_UPSTREAMS)


def changed(i: int, upstreams: int, servers: int, port: int = MARKER_PORT) -> tuple[int, list[str]]:
    """Change i: upstream i mod U, its first server replaced by `marker(i, port)`."""
    k = i % upstreams
    return k, [marker(i, port), *base_servers(k, servers)[1:]]


# ----------------------------------------------------------------- one size


def reached(watch: Watch, changes: int, upstreams: int) -> list[float | None]:
    """When the proxy had each change: accepted it, or a later change of the same
    upstream (which carries it); None if neither yet."""
    out: list[float | None] = [None] * changes
    later: dict[int, float] = {}  # upstream → the earliest time a later change arrived
    for i in reversed(range(changes)):
        k = i % upstreams
        times = [t for t in (watch.accepted_at(i), later.get(k)) if t is not None]
        if times:
            out[i] = later[k] = min(times)
    return out


def drive(
    bench: Bench, change: Callable[[int], float], opts: Options
) -> tuple[list[float], list[float]]:
    """The load, open loop: `change(i)` makes change i and returns its stamp. Returns
    each change's stamp, and how late it was made."""
    count = round(opts.rate * opts.duration)
    written: list[float] = []
    late: list[float] = []
    began = checked = time.monotonic()
    for i in range(count):
        due = began + i / opts.rate
        if (ahead := due - time.monotonic()) > 0:
            time.sleep(ahead)
        stamp = change(i)
        written.append(stamp)
        late.append(stamp - due)
        if stamp - checked > CHECK_EVERY:
            bench.check_alive()
            checked = stamp
    return written, late


def catch_up(
    bench: Bench, watches: Sequence[Watch], changes: int, upstreams: int
) -> list[list[float | None]]:
    """Per proxy, `reached`, once every proxy has every change or after CATCH_UP_TIMEOUT."""

    def done() -> bool:
        return all(None not in reached(w.update(), changes, upstreams) for w in watches)

    try:
        bench.wait(done, CATCH_UP_TIMEOUT, "every change on every proxy", SYNC_CHECK)
    except BenchError:
        bench.check_alive()  # a dead syncer ends the size; a timeout is a figure
    return [reached(w.update(), changes, upstreams) for w in watches]


def load_rows(
    bench: Bench, written: list[float], late: list[float], arrived: list[list[float | None]]
) -> tuple[list[tuple[str, str]], list[float]]:
    """The lag rows, and the lags (one per change that reached every proxy)."""
    lags: list[float] = []
    last = 0.0
    for i, stamp in enumerate(written):
        times = [proxy[i] for proxy in arrived]
        if None not in times:
            at = max(t for t in times if t is not None)
            lags.append(at - stamp)
            last = max(last, at)
    n = len(written)
    caught = (
        f"{last - written[-1]:.2f} s"
        if len(lags) == n and n
        else f"not within {CATCH_UP_TIMEOUT:g} s"
    )
    window = written[-1] - written[0] if n > 1 else 0.0
    accepted = "a read showed it" if bench.real else "its first nginx worker applied the POST"
    return [
        (
            "changes written; due → written: p99 / max (ms)",
            f"{n} in {window:.1f} s; {_p99(late) * 1000:.1f} / {max(late, default=0) * 1000:.1f}",
        ),
        (
            f"changes that reached every proxy (within {CATCH_UP_TIMEOUT:g} s of the last)",
            f"{len(lags)} of {n}",
        ),
        (
            f"lag until the last proxy accepted ({accepted}): p50 / p90 / p99 / max (ms)",
            percentiles_ms(lags),
        ),
        ("last change written → every change on every proxy", caught),
    ], lags


def bench_cpu_rows(
    bench: Bench, since: tuple[float, float], window: float
) -> list[tuple[str, str]]:
    """CPU over the load, % of one core: the bench, the simulators."""
    own, children = (now - then for now, then in zip(bench.cpu_seconds(), since, strict=True))
    rows = [("bench process CPU during the changes, % of one core", f"{100 * own / window:.0f} %")]
    if bench.sim_processes is not None:
        rows.append(
            (
                "simulator processes CPU during the changes, % of one core",
                f"{100 * children / window:.0f} % ({bench.processes} processes)",
            )
        )
    return rows


def _p99(values: Sequence[float]) -> float:
    return percentile(sorted(values), 99)


def _run_size(bench: Bench, opts: Options, size: Size) -> None:
    files = Files(bench.dir, size.upstreams, opts.servers, opts.name_prefix)
    for f in range(len(files.paths)):
        files.write(bench, f)
    syncer = bench.start_syncer(opts, files.sources(opts.poll_interval))
    timeout = cold_timeout(size.proxies, size.upstreams)
    synced = bench.wait_in_sync(files.spec, timeout, SYNC_CHECK)
    size.rows += [
        (f"cold sync: syncer start → {bench.synced_means}", f"{synced:.1f} s"),
        ("syncer CPU, start → synced", f"{syncer.cpu_seconds():.1f} s"),
    ]
    bench.sleep(SETTLE)
    bench.reset_counts()
    watches = bench.watches(*MARKER_WATCH)
    cpu0, bench_cpu0 = syncer.cpu_seconds(), bench.cpu_seconds()
    began = time.monotonic()
    written, late = drive(bench, functools.partial(files.change, bench), opts)
    window = time.monotonic() - began
    cpu = syncer.cpu_seconds() - cpu0
    cpu_rows = [
        ("syncer CPU during the changes, % of one core", f"{100 * cpu / window:.0f} %"),
        *bench_cpu_rows(bench, bench_cpu0, window),
    ]
    arrived = catch_up(bench, watches, len(written), size.upstreams)
    rows, lags = load_rows(bench, written, late, arrived)
    size.rows += [*real_proxy_rows(watches), *rows, *cpu_rows]
    # The proxies' answer times tell a slow proxy (the simulators share the CPUs) from a
    # slow syncer.
    size.rows += [answer_times_row(bench.metrics()), *bench.proxy_rows(syncer)]
    size.rows.append(("syncer warnings and errors logged", syncer.log_summary()))
    size.passed, size.verdict = verdict(lags, len(written))


def verdict(lags: Sequence[float], changes: int) -> tuple[bool, str]:
    if (missing := changes - len(lags)) > 0:
        return False, f"no: {missing} changes did not reach every proxy"
    if (p99 := _p99(lags)) > TARGET:
        return False, f"no: p99 {p99:.2f} s"
    return True, "yes"


def measure(opts: Options, proxies: int, upstreams: int) -> Size:
    """One size, with a fresh syncer and fresh simulators; a BenchError (a timeout, the
    syncer died) fails the size and the grid goes on."""
    size = Size(proxies, upstreams)
    try:
        with Bench(proxies, opts.sim_processes, opts.proxy_urls) as bench:
            _run_size(bench, opts, size)
    except BenchError as e:
        print(f"limits: {size.label}: {e}", file=sys.stderr, flush=True)
        size.verdict = f"no: {str(e).splitlines()[0]}"
    return size


# ----------------------------------------------------------------- the grid


def sizes(opts: LimitsOptions) -> list[tuple[int, int]]:
    """The grid (default: DEFAULT_PROXIES × DEFAULT_UPSTREAMS), smallest first,
    upstreams-major."""
    grid = opts.grid or tuple(itertools.product(DEFAULT_PROXIES, DEFAULT_UPSTREAMS))
    return sorted(set(grid), key=lambda s: (s[1], s[0]))


def limits(opts: Options) -> Table:
    if not isinstance(opts, LimitsOptions):
        opts = LimitsOptions(**dataclasses.asdict(opts))
    if round(opts.rate * opts.duration) > MAX_CHANGES:
        raise BenchError(f"limits: at most {MAX_CHANGES} changes (--rate × --duration)")
    if round(opts.rate * opts.duration) < 1:
        raise BenchError("limits: --rate × --duration makes no change")
    check_interfaces(opts.proxy_urls)  # a wrong URL is no size's failure
    done: list[Size] = []
    for proxies, upstreams in sizes(opts):
        failed = [
            s for s in done if not s.passed and s.proxies <= proxies and s.upstreams <= upstreams
        ]
        if failed:
            size = Size(proxies, upstreams, verdict=f"skipped: {failed[0].label} failed")
        else:
            size = measure(opts, proxies, upstreams)
        print(f"limits: {size.label}: {size.verdict}", file=sys.stderr, flush=True)
        done.append(size)
    table = Table(
        f"limits, p99 ≤ {TARGET:g} s, {opts.rate:g} changes/s for {opts.duration:g} s",
        command("limits", opts),
        setup(opts),
        columns=[s.label for s in done],
        cells=cells(done),
    )
    table.rows.append(("largest sizes that passed", _largest(done)))
    return table


class Column(Protocol):
    """A column of a `Table`: one size, or one replica count (`bench.shards`)."""

    rows: list[tuple[str, str]]
    verdict: str


def cells(done: Sequence[Column]) -> list[tuple[str, list[str]]]:
    """A figure per row, a column per size, in the order the figures first come; the
    verdict first."""
    heading = f"p99 ≤ {TARGET:g} s and every change on every proxy"
    names: dict[str, None] = {}
    for column in done:
        names.update(dict.fromkeys(name for name, _ in column.rows))
    values = [dict(column.rows) for column in done]
    return [(heading, [c.verdict for c in done])] + [
        (name, [v.get(name, "—") for v in values]) for name in names
    ]


def _largest(done: Iterable[Size]) -> str:
    """The passing sizes that no other passing size covers in both dimensions."""
    passed = [s for s in done if s.passed]
    top = [
        s
        for s in passed
        if not any(
            (o.proxies, o.upstreams) != (s.proxies, s.upstreams)
            and o.proxies >= s.proxies
            and o.upstreams >= s.upstreams
            for o in passed
        )
    ]
    return ", ".join(s.label for s in top) or "none"


def command(scenario: str, opts: Options) -> str:
    grid = sizes(opts) if isinstance(opts, LimitsOptions) else []
    line = f"python -m bench {scenario}"
    if opts.proxy_urls:
        line += f" {proxies_argument(opts)} --upstreams {','.join(str(u) for _, u in grid)}"
    else:
        line += " --grid " + ",".join(f"{p}x{u}" for p, u in grid)
    line += f" --servers {opts.servers} --rate {opts.rate:g} --duration {opts.duration:g}"
    return line + tuning_flags(opts)


def setup(opts: Options) -> str:
    debounce = "100 ms (default)" if opts.debounce is None else f"{opts.debounce * 1000:g} ms"
    cpus = os.cpu_count()
    if opts.proxy_urls:
        where = (
            f"{proxies_setup(opts)}; the bench reads each one over HTTP from this machine, "
            f"which the syncer and the bench share ({cpus} CPUs)"
        )
    else:
        processes = "one per CPU" if opts.sim_processes is None else str(opts.sim_processes)
        where = (
            f"{proxies_setup(opts, 'P')} in child processes ({processes}, at most one per "
            f"proxy), round-robin; they share this machine's {cpus} CPUs with the syncer and "
            "the bench, so the limit found is a lower bound for real nginx proxies, which "
            "answer in C on machines of their own"
        )
    return (
        f"Each size: {where}; U upstreams × {opts.servers} servers in file sources of "
        f"{FILE_UPSTREAMS} upstreams each (poll_interval {opts.poll_interval * 1000:g} ms; "
        "a change re-reads one file, not all U upstreams); debounce "
        f"{debounce}; propagation kick {'on' if opts.kick else 'off'}; a fresh syncer per "
        f"size. The cold sync, {SETTLE:g} s of rest, then {opts.rate:g} single-upstream "
        f"changes a second for {opts.duration:g} s, open loop (change i is written at "
        "i / rate s and replaces the first server of upstream i mod U with an address of "
        "its own). Lag: from the stamp before the file's rename until the last proxy "
        "accepted the change (or a later change of the same upstream). A size passes when "
        f"every change reached every proxy and the p99 is at most {TARGET:g} s; sizes run "
        "smallest first, upstreams-major, and a size is skipped once a size no larger in "
        "either dimension failed."
    )
