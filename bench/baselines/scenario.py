"""The `baselines` scenario: dyups-syncer, full push and poll-and-diff, one after the other,
each against fresh simulated proxies, with the same sequence of single-upstream changes.

Lag is measured as in the discovery scenarios (`bench.discovery.lag_figures` over each
proxy's `PostLog`): from the stamp just before the file's rename until the last proxy
accepted a POST carrying the change (or a later change of the same upstream).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.discovery import LagFigures, Versions, lag_figures, servers_state, wait_final
from bench.harness import (
    NGINX_WORKERS,
    READ_MSG_TIMEOUT,
    REPO,
    SHM_ZONE_SIZE,
    Bench,
    BenchError,
    Options,
    PostLog,
    Result,
    SyncerProcess,
    base_servers,
    base_spec,
    percentiles_ms,
    spread,
    tuning_flags,
    upstream_name,
)
from bench.scenarios import MAX_CHANGES, marker

DEFAULT_INTERVAL = 10.0  # the baselines' interval
CHANGE_EVERY = 2.0  # mean seconds between changes; each gap is uniform in [0.5, 1.5] × this
SEED = 1  # the changes: which upstream, and when
SYNC_TIMEOUT = 120.0  # the first sync
SETTLE = 1.0  # after the first sync
SYNCER = "dyups-syncer"
PROGRAMS = {"full push": "bench.baselines.full_push", "poll and diff": "bench.baselines.poll_diff"}
STRATEGIES = [SYNCER, *PROGRAMS]


@dataclass(frozen=True)
class BaselineOptions(Options):
    interval: float = DEFAULT_INTERVAL  # the baselines' interval


class BaselineProcess(SyncerProcess):
    """`python -m bench.baselines.<program> --file F --proxy URL ... --interval N`; stops
    like the syncer (SIGTERM, then SIGKILL)."""

    def __init__(self, module: str, bench: Bench, interval: float) -> None:
        self.module = module
        self.log_path = bench.dir / "baseline.log"
        argv = [sys.executable, "-m", module, "--file", str(bench.upstreams_file)]
        argv += ["--interval", f"{interval:g}"]
        for sim in bench.sims:
            argv += ["--proxy", sim.url]
        with self.log_path.open("wb") as out:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"{self.module} exited with {code}; its output ends with:\n{tail}")

    def log_summary(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return f"{len(lines)} lines" + (f", first: {lines[0][:120]}" if lines else "")

    def close(self) -> None:
        self.stop()


@dataclass
class Figures:
    """One strategy's run."""

    lags: LagFigures
    window: float  # seconds
    posts: list[int]  # per proxy, in the window
    gets: list[int]
    deletes: list[int]
    alerts: int
    cpu: float  # the strategy's process, in the window
    simulators_cpu: float  # in the window
    synced: float  # start → every worker of every proxy holds every upstream
    log: str

    def posts_per_hour(self) -> float:
        return 3600 * sum(self.posts) / len(self.posts) / self.window


@dataclass
class Table(Result):
    """A figure per row, a strategy per column; `rows` (added by the runner) are about the
    whole run and come after the table."""

    columns: list[str] = field(default_factory=list)
    cells: list[tuple[str, list[str]]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", f"`{self.command}`", "", self.setup, ""]
        lines += ["| figure | " + " | ".join(self.columns) + " |"]
        lines += ["|---" * (len(self.columns) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in self.cells]
        if self.rows:
            lines += ["", *(f"Whole run: {name}: {value}." for name, value in self.rows)]
        return "\n".join(lines) + "\n"


def changes_plan(opts: Options) -> list[tuple[float, int]]:
    """(seconds after the window opens, upstream index) of each change."""
    rng = random.Random(SEED)
    plan: list[tuple[float, int]] = []
    at = rng.uniform(0.5, 1.5) * CHANGE_EVERY
    while at < opts.duration:
        plan.append((at, rng.randrange(opts.upstreams)))
        at += rng.uniform(0.5, 1.5) * CHANGE_EVERY
    if len(plan) > MAX_CHANGES:
        raise BenchError(f"at most {MAX_CHANGES} changes: shorten --duration")
    return plan


def _start(strategy: str, bench: Bench, opts: BaselineOptions) -> SyncerProcess:
    if strategy == SYNCER:
        return bench.start_syncer(opts)
    process = BaselineProcess(PROGRAMS[strategy], bench, opts.interval)
    bench.enter_context(contextlib.closing(process))
    bench.syncer = process  # so that the bench's waits notice if it dies
    return process


def run_strategy(strategy: str, opts: BaselineOptions, plan: list[tuple[float, int]]) -> Figures:
    print(f"  {strategy}", file=sys.stderr, flush=True)
    spec = base_spec(opts.upstreams, opts.servers)
    with Bench(opts.proxies, opts.processes) as bench:
        bench.write_upstreams(spec)
        process = _start(strategy, bench, opts)
        trackers = bench.wait_synced(set(spec), SYNC_TIMEOUT)
        synced = max(max(t.first.values()) for t in trackers) - process.started
        bench.sleep(SETTLE)
        for sim in bench.sims:
            sim.reset_stats()
        logs = [PostLog(sim) for sim in bench.sims]
        versions: Versions = {}
        cpu0, simulators0 = process.cpu_seconds(), bench.cpu_seconds()[1]
        began = time.monotonic()
        for i, (offset, k) in enumerate(plan):
            bench.sleep(began + offset - time.monotonic())
            name = upstream_name(k)
            versions.setdefault(name, [(began, frozenset(spec[name]))])
            spec[name] = [marker(i), *base_servers(k, opts.servers)[1:]]
            stamp = bench.write_upstreams(spec)
            versions[name].append((stamp, frozenset(spec[name])))
        bench.sleep(began + opts.duration - time.monotonic())
        window = time.monotonic() - began
        stats = [sim.stats for sim in bench.sims]
        cpu = process.cpu_seconds() - cpu0
        simulators_cpu = bench.cpu_seconds()[1] - simulators0
        final = {name: states[-1][1] for name, states in versions.items()}
        # Changes made late in the window are accepted after it: wait for them.
        wait_final(bench, logs, final, servers_state, 2 * opts.interval + SYNC_TIMEOUT)
        return Figures(
            lags=lag_figures(versions, logs, servers_state, opts.debounce_s),
            window=window,
            posts=[s.posts for s in stats],
            gets=[s.gets for s in stats],
            deletes=[s.deletes for s in stats],
            alerts=sum(s.alerts for s in stats),
            cpu=cpu,
            simulators_cpu=simulators_cpu,
            synced=synced,
            log=process.log_summary(),
        )


def _percentile(values: list[float], p: float) -> float | None:
    """Nearest rank, as `percentiles_ms`."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "—"
    return f"{value / reference:.3g}×"


def _cells(runs: dict[str, Figures], opts: BaselineOptions) -> list[tuple[str, list[str]]]:
    figures = list(runs.values())
    syncer = runs[SYNCER]

    def row(name: str, value: Callable[[Figures], str]) -> tuple[str, list[str]]:
        return name, [value(f) for f in figures]

    def lag(f: Figures, p: float) -> float | None:
        return _percentile(f.lags.all_proxies, p)

    interval = f"{opts.interval:g} s"
    return [
        row(
            "interval",
            lambda f: "— (reacts to each change)" if f is syncer else interval,
        ),
        row(
            "lag, change written → accepted by every proxy: p50 / p90 / p99 / max (ms)",
            lambda f: percentiles_ms(f.lags.all_proxies),
        ),
        row(
            "lag, each (change, proxy): p50 / p90 / p99 / max (ms)",
            lambda f: percentiles_ms(f.lags.per_proxy),
        ),
        row(
            "changes accepted by every proxy",
            lambda f: f"{len(f.lags.all_proxies)} of {f.lags.changes}",
        ),
        row("POSTs per proxy in the window, mean (min–max)", lambda f: spread(f.posts)),
        row("GETs per proxy in the window, mean (min–max)", lambda f: spread(f.gets)),
        row("DELETEs per proxy in the window, mean (min–max)", lambda f: spread(f.deletes)),
        row(
            "POSTs per hour per proxy (extrapolated from the window)",
            lambda f: f"{f.posts_per_hour():,.0f}",
        ),
        row(
            "GETs per hour per proxy (extrapolated from the window)",
            lambda f: f"{3600 * sum(f.gets) / len(f.gets) / f.window:,.0f}",
        ),
        row(
            "ratio to dyups-syncer: lag p50 (until every proxy)",
            lambda f: _ratio(lag(f, 50), lag(syncer, 50)),
        ),
        row(
            "ratio to dyups-syncer: lag p99 (until every proxy)",
            lambda f: _ratio(lag(f, 99), lag(syncer, 99)),
        ),
        row(
            "ratio to dyups-syncer: POSTs per hour",
            lambda f: _ratio(f.posts_per_hour(), syncer.posts_per_hour()),
        ),
        row("strategy's process CPU in the window", lambda f: f"{f.cpu:.2f} s"),
        row(
            "strategy's process CPU in the window, % of one core",
            lambda f: f"{100 * f.cpu / f.window:.2f} %",
        ),
        row(
            "simulator processes CPU in the window",
            lambda f: f"{f.simulators_cpu:.2f} s",
        ),
        row("queue overflows (`alert` 500s), all proxies", lambda f: str(f.alerts)),
        row(
            "first sync: start → every worker of every proxy holds every upstream",
            lambda f: f"{f.synced:.2f} s",
        ),
        row("window", lambda f: f"{f.window:.1f} s"),
        row("warnings and errors logged", lambda f: f.log),
    ]


def command(scenario: str, opts: Options) -> str:
    line = f"python -m bench {scenario} --proxies {opts.proxies} --upstreams {opts.upstreams}"
    line += f" --servers {opts.servers} --duration {opts.duration:g}"
    if isinstance(opts, BaselineOptions):
        line += f" --interval {opts.interval:g}"
    return line + tuning_flags(opts)


def setup(opts: BaselineOptions, changes: int) -> str:
    debounce = "100 ms (default)" if opts.debounce is None else f"{opts.debounce * 1000:g} ms"
    return (
        f"{opts.proxies} simulated proxies ({NGINX_WORKERS} nginx workers, "
        f"{SHM_ZONE_SIZE // 2**20} MiB zone, read_msg_timeout {READ_MSG_TIMEOUT:g} s), "
        f"{opts.upstreams} upstreams × {opts.servers} servers; {changes} single-upstream "
        f"changes in a {opts.duration:g} s window (a random upstream each, gaps uniform in "
        f"{CHANGE_EVERY / 2:g}–{1.5 * CHANGE_EVERY:g} s, seed {SEED}), the same for each "
        "strategy, each against fresh simulators. dyups-syncer: file source poll_interval "
        f"{opts.poll_interval * 1000:g} ms, debounce {debounce}, propagation kick "
        f"{'on' if opts.kick else 'off'}. Baselines: every {opts.interval:g} s, sequential, "
        f"one keep-alive connection per proxy. {opts.where_simulators().capitalize()}."
    )


def baselines(opts: Options) -> Result:
    if not isinstance(opts, BaselineOptions):
        opts = BaselineOptions(**dataclasses.asdict(opts))
    plan = changes_plan(opts)
    runs = {strategy: run_strategy(strategy, opts, plan) for strategy in STRATEGIES}
    title = f"baselines, {opts.proxies} proxies, {opts.upstreams} upstreams × {opts.servers}"
    title += f", interval {opts.interval:g} s"
    return Table(
        title,
        command("baselines", opts),
        setup(opts, len(plan)),
        columns=STRATEGIES,
        cells=_cells(runs, opts),
    )
