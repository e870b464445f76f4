"""The scenarios: `change` (lag of single changes), `cold` (first sync), `steady` (idle cost)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from bench.harness import (
    NGINX_WORKERS,
    POLL_INTERVAL,
    READ_MSG_TIMEOUT,
    SHM_ZONE_SIZE,
    Bench,
    BenchError,
    Options,
    Result,
    SyncerProcess,
    Tracker,
    answer_times_row,
    base_servers,
    base_spec,
    percentiles_ms,
    spread,
    upstream_name,
)
from syncer.testing.dyups import AppliedEvent

SYNC_TIMEOUT = 120.0  # a whole first sync
ACCEPT_TIMEOUT = 10.0  # one change, to every proxy
SETTLE = 1.0  # after a sync: let the trailing verify reads and kicks finish
MAX_CHANGES = 65536  # one marker address per change: 10.255.X.Y
_MARK = re.compile(r"10\.255\.(\d+)\.(\d+):7777")


def command(scenario: str, opts: Options) -> str:
    line = f"python -m bench {scenario} --proxies {opts.proxies}"
    line += f" --upstreams {opts.upstreams} --servers {opts.servers}"
    if scenario == "change":
        line += f" --changes {opts.changes}"
    if scenario == "steady":
        line += f" --duration {opts.duration:g}"
    if not opts.kick:
        line += " --no-kick"
    if opts.debounce is not None:
        line += f" --debounce {opts.debounce:g}"
    if opts.poll_interval != POLL_INTERVAL:
        line += f" --poll-interval {opts.poll_interval:g}"
    if opts.gap:
        line += f" --gap {opts.gap:g}"
    if opts.sim_processes is not None:
        line += f" --sim-processes {opts.sim_processes}"
    return line


def title(scenario: str, opts: Options) -> str:
    parts = [scenario]
    if scenario == "change":
        parts.append(f"kick {'on' if opts.kick else 'off'}")
    if opts.gap:
        parts.append(f"{opts.gap * 1000:g} ms idle before each change")
    if opts.poll_interval != POLL_INTERVAL:
        parts.append(f"poll_interval {opts.poll_interval:g} s")
    return ", ".join(parts)


def setup(opts: Options) -> str:
    debounce = "100 ms (default)" if opts.debounce is None else f"{opts.debounce * 1000:g} ms"
    return (
        f"{opts.proxies} simulated proxies ({NGINX_WORKERS} nginx workers, "
        f"{SHM_ZONE_SIZE // 2**20} MiB zone, "
        f"read_msg_timeout {READ_MSG_TIMEOUT:g} s), {opts.upstreams} upstreams × {opts.servers} "
        f"servers; file source poll_interval {opts.poll_interval * 1000:g} ms; debounce {debounce}; "
        f"propagation kick {'on' if opts.kick else 'off'}; {opts.where_simulators()}."
    )


def _syncer_rows(
    bench: Bench, syncer: SyncerProcess, phase: str, cpu: float, bench_cpu0: tuple[float, float]
) -> list[tuple[str, str]]:
    return [
        (f"syncer CPU ({phase})", f"{cpu:.2f} s"),
        ("syncer CPU (since start)", f"{syncer.cpu_seconds():.2f} s"),
        *bench.cpu_rows(bench_cpu0, "simulators + driver", "driver"),
        ("syncer warnings and errors logged", syncer.log_summary()),
    ]


# ----------------------------------------------------------------- change


def marker(i: int) -> str:
    """A server address unique to change `i`, to find its POST in the applied events."""
    return f"10.255.{i // 256}.{i % 256}:7777"


def marker_index(event: AppliedEvent) -> int | None:
    match = _MARK.search(event.body or "")
    return int(match[1]) * 256 + int(match[2]) if match else None


def _accepted(tracker: Tracker, i: int) -> Callable[[], bool]:
    return lambda: tracker.accepted_at(i) is not None


def change(opts: Options) -> Result:
    if opts.changes > MAX_CHANGES:
        raise BenchError(f"--changes is at most {MAX_CHANGES}")
    spec = base_spec(opts.upstreams, opts.servers)
    with Bench(opts.proxies, opts.processes) as bench:
        bench.write_upstreams(spec)
        syncer = bench.start_syncer(opts)
        bench.wait_synced(set(spec), SYNC_TIMEOUT)
        bench.sleep(SETTLE)
        for sim in bench.sims:
            sim.reset_stats()
        trackers = [Tracker(sim, marker_index) for sim in bench.sims]
        cpu0, bench_cpu0, began = syncer.cpu_seconds(), bench.cpu_seconds(), time.monotonic()

        written: list[float] = []
        for i in range(opts.changes):
            k = i % opts.upstreams
            spec[upstream_name(k)] = [marker(i), *base_servers(k, opts.servers)[1:]]
            if opts.gap:
                bench.sleep(opts.gap)
            written.append(bench.write_upstreams(spec))
            for tracker in trackers:
                bench.wait_tracker(tracker, _accepted(tracker, i), ACCEPT_TIMEOUT, f"change {i}")
        wall = time.monotonic() - began
        cpu = syncer.cpu_seconds() - cpu0

        # Without the kick the last changes reach the other nginx workers on their timer.
        deadline = time.monotonic() + 2 * READ_MSG_TIMEOUT + 1
        n = opts.changes
        while time.monotonic() < deadline and not all(t.update().holds(n) for t in trackers):
            time.sleep(0.05)

        accept: list[float] = []
        plane: list[float] = []
        for i, stamp in enumerate(written):
            accepted = [t.accepted_at(i) for t in trackers]
            accept.append(max(a for a in accepted if a is not None) - stamp)
            everywhere = [t.everywhere_at(i) for t in trackers]
            if None not in everywhere:
                plane.append(max(e for e in everywhere if e is not None) - stamp)

        rows = [
            ("changes", str(n)),
            ("accept lag p50 / p90 / p99 / max (ms)", percentiles_ms(accept)),
            ("data-plane lag p50 / p90 / p99 / max (ms)", percentiles_ms(plane)),
            ("changes on every nginx worker of every proxy", f"{len(plane)} of {n}"),
            *bench.proxy_rows(syncer),
            ("wall time (measured phase)", f"{wall:.1f} s"),
            *_syncer_rows(bench, syncer, "measured phase", cpu, bench_cpu0),
        ]
    return Result(title("change", opts), command("change", opts), setup(opts), rows)


# ----------------------------------------------------------------- cold


def _content_mismatches(bench: Bench, spec: dict[str, list[str]]) -> int:
    """(proxy, nginx worker) pairs whose upstreams differ from the file."""
    want = {name: sorted(servers) for name, servers in spec.items()}
    wrong = 0
    for sim in bench.sims:
        for w in range(sim.workers):
            held = {name: sorted(s.addr for s in ss) for name, ss in sim.upstreams(w).items()}
            wrong += held != want
    return wrong


def cold(opts: Options) -> Result:
    spec = base_spec(opts.upstreams, opts.servers)
    with Bench(opts.proxies, opts.processes) as bench:
        bench.write_upstreams(spec)
        bench_cpu0 = bench.cpu_seconds()
        syncer = bench.start_syncer(opts)
        trackers = bench.wait_synced(set(spec), SYNC_TIMEOUT)
        cpu = syncer.cpu_seconds()
        wall = time.monotonic() - syncer.started
        answers = answer_times_row(bench.metrics())

        start = syncer.started
        first = [min(t.first.values()) - start for t in trackers]
        accepted = [max(t.accepted_at(n) or 0.0 for n in spec) - start for t in trackers]
        everywhere = [max(t.first.values()) - start for t in trackers]
        bench.sleep(SETTLE)
        rows = [
            (
                "start → every nginx worker of every proxy holds everything",
                f"{max(everywhere):.2f} s",
            ),
            ("per proxy: start → all held, p50 / p90 / p99 / max (ms)", percentiles_ms(everywhere)),
            (
                "per proxy: start → every POST accepted, p50 / p90 / p99 / max (ms)",
                percentiles_ms(accepted),
            ),
            ("start → first POST accepted (startup + reading the file)", f"{min(first):.2f} s"),
            (
                "(proxy, nginx worker) pairs differing from the file",
                str(_content_mismatches(bench, spec)),
            ),
            *bench.proxy_rows(syncer),
            answers,
            ("wall time (start → all held, as seen by the bench)", f"{wall:.2f} s"),
            *_syncer_rows(bench, syncer, "start → all held", cpu, bench_cpu0),
        ]
    return Result(title("cold", opts), command("cold", opts), setup(opts), rows)


# ----------------------------------------------------------------- steady


def steady(opts: Options) -> Result:
    spec = base_spec(opts.upstreams, opts.servers)
    with Bench(opts.proxies, opts.processes) as bench:
        bench.write_upstreams(spec)
        syncer = bench.start_syncer(opts)
        trackers = bench.wait_synced(set(spec), SYNC_TIMEOUT)
        synced = max(max(t.first.values()) for t in trackers) - syncer.started
        bench.sleep(2 * SETTLE)
        for sim in bench.sims:
            sim.reset_stats()
        cpu0, bench_cpu0, began = syncer.cpu_seconds(), bench.cpu_seconds(), time.monotonic()
        bench.sleep(opts.duration)
        window = time.monotonic() - began
        cpu = syncer.cpu_seconds() - cpu0
        stats = [sim.stats for sim in bench.sims]
        rows = [
            ("cold sync before the window", f"{synced:.2f} s"),
            ("window", f"{window:.1f} s"),
            ("POSTs during the window, all proxies", str(sum(s.posts for s in stats))),
            (
                "GETs per proxy per second, mean (min–max)",
                spread([s.gets / window for s in stats], 2),
            ),
            ("syncer CPU in the window, % of one core", f"{100 * cpu / window:.2f} %"),
            *bench.proxy_rows(syncer),
            ("syncer RSS at the end (VmRSS)", f"{syncer.rss_mib():.1f} MiB"),
            *_syncer_rows(bench, syncer, "window", cpu, bench_cpu0),
        ]
    return Result(title("steady", opts), command("steady", opts), setup(opts), rows)
