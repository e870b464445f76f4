"""The file-source scenarios: `change` (lag of single changes), `cold` (first sync),
`steady` (idle cost), `reload` (repair after a proxy reload). `change` also runs against
real proxies (`--proxy-url`). (`churn` is in `bench.churn`.)"""

from __future__ import annotations

import functools
import random
import re
import time
from collections.abc import Callable

from bench.harness import (
    NGINX_WORKERS,
    POLL_INTERVAL,
    READ_MSG_TIMEOUT,
    REAL_PREFIX,
    SHM_ZONE_SIZE,
    Bench,
    BenchError,
    Options,
    Result,
    SyncerProcess,
    Tracker,
    Watch,
    answer_times_row,
    applied_count,
    base_servers,
    base_spec,
    percentiles_ms,
    proxies_argument,
    real_proxy_rows,
    spread,
    tuning_flags,
    upstream_name,
    upstream_yaml,
)
from syncer.testing.dyups import AppliedEvent

SYNC_TIMEOUT = 120.0  # a whole first sync
ACCEPT_TIMEOUT = 10.0  # one change, to every proxy
SETTLE = 1.0  # after a sync: let the trailing verify reads and kicks finish
MAX_CHANGES = 65536  # one marker address per change: 10.255.X.Y
MARKER_PORT = 7777  # the file source's; an EndpointSlice's markers have the slice's port
_MARK = re.compile(r"10\.255\.(\d+)\.(\d+):\d+")


def command(scenario: str, opts: Options) -> str:
    line = f"python -m bench {scenario} {proxies_argument(opts)}"
    line += f" --upstreams {opts.upstreams} --servers {opts.servers}"
    if scenario == "change":
        line += f" --changes {opts.changes}"
    if scenario == "steady":
        line += f" --duration {opts.duration:g}"
    if scenario == "churn":
        line += f" --duration {opts.duration:g} --rate {opts.rate:g}"
    if scenario == "reload":
        line += f" --changes {opts.changes}"
    if opts.gap:
        line += f" --gap {opts.gap:g}"
    return line + tuning_flags(opts)


def title(scenario: str, opts: Options) -> str:
    parts = [scenario]
    if scenario == "change":
        parts.append(f"kick {'on' if opts.kick else 'off'}")
    if opts.proxy_urls:
        parts.append(f"{opts.proxies} real proxies")
    if scenario == "churn":
        parts.append(f"{opts.rate:g} endpoint events/s for {opts.duration:g} s")
    if scenario in ("churn", "reload"):
        parts.append(f"{opts.proxies} proxies, {opts.upstreams} × {opts.servers}")
    if opts.gap:
        parts.append(f"{opts.gap * 1000:g} ms idle before each change")
    if opts.poll_interval != POLL_INTERVAL:
        parts.append(f"poll_interval {opts.poll_interval:g} s")
    return ", ".join(parts)


def proxies_setup(opts: Options, count: str = "") -> str:
    """The proxies, for a table's setup line; `count` in place of `opts.proxies`."""
    count = count or str(opts.proxies)
    if opts.proxy_urls:
        return (
            f"{count} real dyups prox{'ies' if opts.proxies > 1 else 'y'} "
            f"(--proxy-url; upstreams named {REAL_PREFIX}…, owned by the syncer through "
            "owned_prefix, no other upstream touched)"
        )
    return (
        f"{count} simulated proxies ({NGINX_WORKERS} nginx workers, "
        f"{SHM_ZONE_SIZE // 2**20} MiB zone, read_msg_timeout {READ_MSG_TIMEOUT:g} s)"
    )


def setup(opts: Options) -> str:
    debounce = "100 ms (default)" if opts.debounce is None else f"{opts.debounce * 1000:g} ms"
    return (
        f"{proxies_setup(opts)}, {opts.upstreams} upstreams × {opts.servers} "
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


def marker(i: int, port: int = MARKER_PORT) -> str:
    """A server address unique to change `i`, to find its POST in the applied events."""
    return f"10.255.{i // 256}.{i % 256}:{port}"


def _marker_in(text: str) -> int | None:
    match = _MARK.search(text)
    return int(match[1]) * 256 + int(match[2]) if match else None


def marker_index(event: AppliedEvent) -> int | None:
    """The change whose POST a simulator applied, if any."""
    return _marker_in(event.body or "")


def marker_served(_name: str, addresses: tuple[str, ...]) -> int | None:
    """The change a real proxy's upstream shows, if any (see `HttpWatch`)."""
    return _marker_in(" ".join(addresses))


MARKER_WATCH = (marker_index, marker_served, _MARK.pattern)  # `Bench.watches` arguments


def _accepted(tracker: Watch, i: int) -> Callable[[], bool]:
    return lambda: tracker.accepted_at(i) is not None


def change(opts: Options) -> Result:
    if opts.changes > MAX_CHANGES:
        raise BenchError(f"--changes is at most {MAX_CHANGES}")
    spec = base_spec(opts.upstreams, opts.servers, opts.name_prefix)
    with Bench(opts.proxies, opts.processes, opts.proxy_urls) as bench:
        bench.write_upstreams(spec)
        syncer = bench.start_syncer(opts)
        bench.wait_in_sync(spec, SYNC_TIMEOUT)
        bench.sleep(SETTLE)
        bench.reset_counts()
        watches = bench.watches(*MARKER_WATCH)
        cpu0, bench_cpu0, began = syncer.cpu_seconds(), bench.cpu_seconds(), time.monotonic()

        written: list[float] = []
        for i in range(opts.changes):
            k = i % opts.upstreams
            name = upstream_name(k, opts.name_prefix)
            spec[name] = [marker(i), *base_servers(k, opts.servers)[1:]]
            if opts.gap:
                bench.sleep(opts.gap)
            written.append(bench.write_upstreams(spec))
            for watch in watches:
                bench.wait_tracker(watch, _accepted(watch, i), ACCEPT_TIMEOUT, f"change {i}")
        wall = time.monotonic() - began
        cpu = syncer.cpu_seconds() - cpu0

        # Without the kick the last changes reach the other nginx workers on their timer.
        trackers = [w for w in watches if isinstance(w, Tracker)]  # none on real proxies
        deadline = time.monotonic() + 2 * READ_MSG_TIMEOUT + 1
        n = opts.changes
        while time.monotonic() < deadline and not all(t.update().holds(n) for t in trackers):
            time.sleep(0.05)

        accept: list[float] = []
        plane: list[float] = []
        for i, stamp in enumerate(written):
            accepted = [w.accepted_at(i) for w in watches]
            if None not in accepted:  # the waits above see to it: counted, not assumed
                accept.append(max(a for a in accepted if a is not None) - stamp)
            everywhere = [w.everywhere_at(i) for w in watches]
            if None not in everywhere:
                plane.append(max(e for e in everywhere if e is not None) - stamp)

        rows = [
            *real_proxy_rows(watches),
            ("changes", str(n)),
            ("changes accepted by every proxy", f"{len(accept)} of {n}"),
            ("accept lag p50 / p90 / p99 / max (ms)", percentiles_ms(accept)),
            *_plane_rows(bench.real, plane, n),
            *bench.proxy_rows(syncer),
            ("wall time (measured phase)", f"{wall:.1f} s"),
            *_syncer_rows(bench, syncer, "measured phase", cpu, bench_cpu0),
        ]
    return Result(title("change", opts), command("change", opts), setup(opts), rows)


def _plane_rows(real: bool, plane: list[float], changes: int) -> list[tuple[str, str]]:
    if real:
        why = (
            "not visible on real proxies: a read is answered by one nginx worker, which "
            "applies the shared queue before answering"
        )
        return [("data-plane lag (every nginx worker)", why)]
    return [
        ("data-plane lag p50 / p90 / p99 / max (ms)", percentiles_ms(plane)),
        ("changes on every nginx worker of every proxy", f"{len(plane)} of {changes}"),
    ]


# ----------------------------------------------------------------- cold


def content_mismatches(bench: Bench, spec: dict[str, list[str]]) -> int:
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
                str(content_mismatches(bench, spec)),
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
        bench.reset_counts()
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


# ----------------------------------------------------------------- reload

PROBE_INTERVAL = 1.0  # the syncer's default
DRIFT = "dyups_syncer_drift_repairs_total"
REPAIR_TIMEOUT = 30.0  # one reload, until every worker of the proxy holds everything again


def reload(opts: Options) -> Result:
    """Reload the proxies one at a time (classic dyups: every dynamic upstream is
    dropped) and time the repair, with the default probe interval."""
    spec = base_spec(opts.upstreams, opts.servers)
    names = set(spec)
    rng = random.Random(5)
    with Bench(opts.proxies, opts.processes) as bench:
        bench.write_upstreams_text(upstream_yaml(n, s) for n, s in spec.items())
        syncer = bench.start_syncer(opts)
        trackers = bench.wait_synced(names, SYNC_TIMEOUT)
        synced = max(max(t.first.values()) for t in trackers) - syncer.started
        bench.sleep(SETTLE)
        bench.reset_counts()
        cpu0, bench_cpu0, began = syncer.cpu_seconds(), bench.cpu_seconds(), time.monotonic()
        first: list[float] = []  # reload → the first POST accepted (the loss was found)
        accepted: list[float] = []  # reload → every POST accepted
        everywhere: list[float] = []  # reload → every nginx worker holds every upstream
        posts: list[float] = []
        gets: list[float] = []
        for r in range(opts.changes):
            sim = bench.sims[r % len(bench.sims)]
            bench.sleep(rng.uniform(0, PROBE_INTERVAL))  # any phase of the probe timer
            before, start = sim.stats, applied_count(sim)
            stamp = time.monotonic()
            sim.reload()
            tracker = Tracker(sim, lambda e: e.name if e.name in names else None, start)
            done = functools.partial(tracker.holds, len(names))
            bench.wait_tracker(tracker, done, REPAIR_TIMEOUT, f"reload {r}")
            first.append(min(tracker.first.values()) - stamp)
            accepted.append(max(tracker.accepted_at(n) or 0.0 for n in names) - stamp)
            everywhere.append(max(tracker.first.values()) - stamp)
            bench.sleep(SETTLE)  # the repair's verify reads and kick
            after = sim.stats
            posts.append(after.posts - before.posts)
            gets.append(after.gets - before.gets)
        window = time.monotonic() - began
        cpu = syncer.cpu_seconds() - cpu0
        metrics = bench.metrics()
        rows = [
            ("cold sync before the reloads", f"{synced:.2f} s"),
            (
                "reloads",
                f"{opts.changes}, one proxy at a time, round-robin, each after {SETTLE:g} s "
                f"+ uniform 0–{PROBE_INTERVAL:g} s of rest (probe interval "
                f"{PROBE_INTERVAL:g} s, the default)",
            ),
            (
                "reload → first POST accepted (the probe or the resync found the loss): "
                "p50 / p90 / p99 / max (ms)",
                percentiles_ms(first),
            ),
            ("reload → every POST accepted: p50 / p90 / p99 / max (ms)", percentiles_ms(accepted)),
            (
                "reload → every nginx worker of the proxy holds every upstream: "
                "p50 / p90 / p99 / max (ms)",
                percentiles_ms(everywhere),
            ),
            (
                f"requests to the reloaded proxy per repair (until {SETTLE:g} s after it)",
                f"POSTs {spread(posts)}; GETs {spread(gets)}",
            ),
            (
                "the syncer's drift repairs since start, one per upstream: `lost` (found by "
                "the probe) / `missing` (found by the resync)",
                " / ".join(f"{metrics.total(DRIFT, reason=r):.0f}" for r in ("lost", "missing")),
            ),
            (
                "(proxy, nginx worker) pairs differing from the file at the end",
                str(content_mismatches(bench, spec)),
            ),
            answer_times_row(metrics),
            *bench.proxy_rows(syncer),
            ("syncer CPU during the reloads, % of one core", f"{100 * cpu / window:.2f} %"),
            *_syncer_rows(bench, syncer, f"the reloads, {window:.1f} s", cpu, bench_cpu0),
        ]
    return Result(title("reload", opts), command("reload", opts), setup(opts), rows)
