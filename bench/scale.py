"""`scale`: the syncer's memory while it holds 10,000 and 100,000 endpoints.

Each shape runs on its own, with a fresh syncer and fresh simulators: a file source of
U upstreams × S servers, `--proxies` simulated proxies (2 by default: the proxies are
not the point, but the syncer keeps a cache of each one's upstreams), the cold sync,
then `--rest` seconds with no change (the resync reads every proxy's whole `/detail`
every 10 s meanwhile). The syncer's memory is read from /proc/PID/status when every
nginx worker of every proxy holds every upstream, and again after the rest.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.baselines.scenario import Table
from bench.harness import (
    NGINX_WORKERS,
    READ_MSG_TIMEOUT,
    SHM_ZONE_SIZE,
    Bench,
    Options,
    SyncerProcess,
    base_spec,
    spread,
    tuning_flags,
    upstream_yaml,
)
from bench.scenarios import content_mismatches

SHAPES = ((1000, 10), (5000, 20))  # upstreams × servers: 10,000 and 100,000 endpoints
SYNC_TIMEOUT = 600.0
MEMORY = ("VmRSS", "RssAnon", "VmHWM")  # resident; of it anonymous (the heap); peak resident
SAMPLE = 5.0  # VmRSS is read this often during the rest


@dataclass
class Held:
    """One shape's figures."""

    upstreams: int
    servers: int
    synced: float  # start → every nginx worker of every proxy holds every upstream
    sync_cpu: float  # the syncer's CPU seconds until then
    at_sync: dict[str, float]  # MEMORY, MiB
    at_rest: dict[str, float]
    rest: float  # seconds
    rest_cpu: float
    rest_rss: list[float]  # VmRSS every SAMPLE seconds of the rest, MiB
    posts: list[int]  # per proxy, since the start
    gets: list[int]
    alerts: int
    mismatches: int  # (proxy, nginx worker) pairs differing from the file, after the rest
    snapshot_bytes: int
    log: str

    @property
    def endpoints(self) -> int:
        return self.upstreams * self.servers


def _memory(syncer: SyncerProcess) -> dict[str, float]:
    return {key: syncer.status_mib(key) for key in MEMORY}


def hold(opts: Options, upstreams: int, servers: int) -> Held:
    spec = base_spec(upstreams, servers)
    with Bench(opts.proxies, opts.processes) as bench:
        bench.write_upstreams_text(upstream_yaml(n, s) for n, s in spec.items())
        syncer = bench.start_syncer(opts)
        trackers = bench.wait_synced(set(spec), SYNC_TIMEOUT)
        at_sync, sync_cpu = _memory(syncer), syncer.cpu_seconds()
        synced = max(max(t.first.values()) for t in trackers) - syncer.started
        rest_rss: list[float] = []
        rest_began = time.monotonic()
        while (left := rest_began + opts.rest - time.monotonic()) > 0:
            bench.sleep(min(SAMPLE, left))
            rest_rss.append(syncer.status_mib("VmRSS"))
        at_rest, rest_cpu = _memory(syncer), syncer.cpu_seconds() - sync_cpu
        stats = [sim.stats for sim in bench.sims]
        snapshot = bench.dir / "snapshot.json"
        return Held(
            upstreams=upstreams,
            servers=servers,
            synced=synced,
            sync_cpu=sync_cpu,
            at_sync=at_sync,
            at_rest=at_rest,
            rest=opts.rest,
            rest_cpu=rest_cpu,
            rest_rss=rest_rss,
            posts=[s.posts for s in stats],
            gets=[s.gets for s in stats],
            alerts=sum(s.alerts for s in stats),
            mismatches=content_mismatches(bench, spec),
            snapshot_bytes=snapshot.stat().st_size if snapshot.exists() else 0,
            log=syncer.log_summary(),
        )


def _mib(mib: float) -> str:
    return f"{mib:.1f} MiB ({mib * 2**20 / 1e6:.1f} MB)"


def _per_endpoint(shapes: list[Held]) -> list[str]:
    """VmRSS after the rest, per endpoint: the whole of it, and what each shape adds over
    the previous one (the interpreter and libraries are in the first, not the second)."""
    whole = [f"{h.at_rest['VmRSS'] * 2**20 / h.endpoints:,.0f} B" for h in shapes]
    added = ["—"]
    for a, b in itertools.pairwise(shapes):
        extra = (b.at_rest["VmRSS"] - a.at_rest["VmRSS"]) * 2**20
        added.append(f"{extra / (b.endpoints - a.endpoints):,.0f} B")
    return [f"{w}; marginal {m}" for w, m in zip(whole, added, strict=True)]


def scale(opts: Options) -> Table:
    """The issue's shapes, or the one given with --upstreams / --servers."""
    shapes = [(opts.upstreams, opts.servers or SHAPES[0][1])] if opts.upstreams else list(SHAPES)
    held = [hold(opts, u, s) for u, s in shapes]

    def row(name: str, value: Callable[[Held], object]) -> tuple[str, list[str]]:
        return name, [str(value(h)) for h in held]

    cells = [
        row("endpoints (upstreams × servers)", lambda h: f"{h.endpoints:,}"),
        row(
            "cold sync (start → every nginx worker of every proxy holds every upstream)",
            lambda h: f"{h.synced:.2f} s",
        ),
        row("syncer CPU, start → synced", lambda h: f"{h.sync_cpu:.2f} s"),
        *[(f"syncer {k} when synced", [_mib(h.at_sync[k]) for h in held]) for k in MEMORY],
        *[(f"syncer {k} after the rest", [_mib(h.at_rest[k]) for h in held]) for k in MEMORY],
        row(
            f"syncer VmRSS every {SAMPLE:g} s of the rest (MiB)",
            lambda h: " / ".join(f"{x:.0f}" for x in h.rest_rss),
        ),
        (
            "syncer VmRSS after the rest per endpoint; marginal over the previous column",
            _per_endpoint(held),
        ),
        row(
            "syncer CPU during the rest, % of one core",
            lambda h: f"{100 * h.rest_cpu / h.rest:.2f} %",
        ),
        row("POSTs per proxy since the start, mean (min–max)", lambda h: spread(h.posts)),
        row("GETs per proxy since the start, mean (min–max)", lambda h: spread(h.gets)),
        row("queue overflows (`alert` 500s), all proxies", lambda h: h.alerts),
        row(
            "(proxy, nginx worker) pairs differing from the file after the rest",
            lambda h: h.mismatches,
        ),
        row("snapshot file", lambda h: f"{h.snapshot_bytes / 2**20:.1f} MiB"),
        row("syncer warnings and errors logged", lambda h: h.log),
    ]
    columns = [f"{u:,} × {s}" for u, s in shapes]
    title = f"scale, {opts.proxies} proxies"
    return Table(title, command("scale", opts), setup(opts), columns=columns, cells=cells)


def command(scenario: str, opts: Options) -> str:
    line = f"python -m bench {scenario} --proxies {opts.proxies} --rest {opts.rest:g}"
    if opts.upstreams:
        line += f" --upstreams {opts.upstreams} --servers {opts.servers or SHAPES[0][1]}"
    return line + tuning_flags(opts)  # --no-kick too, which this line used to leave out


def setup(opts: Options) -> str:
    debounce = "100 ms (default)" if opts.debounce is None else f"{opts.debounce * 1000:g} ms"
    return (
        f"{opts.proxies} simulated prox{'ies' if opts.proxies > 1 else 'y'} "
        f"({NGINX_WORKERS} nginx workers, "
        f"{SHM_ZONE_SIZE // 2**20} MiB zone, read_msg_timeout {READ_MSG_TIMEOUT:g} s); "
        f"file source poll_interval {opts.poll_interval * 1000:g} ms; debounce {debounce}; "
        f"propagation kick {'on' if opts.kick else 'off'}; each shape with a fresh syncer "
        "and fresh simulators, "
        f"the cold sync, then {opts.rest:g} s with no change; {opts.where_simulators()}."
    )
