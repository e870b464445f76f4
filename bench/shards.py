"""`shards`: the `limits` load against 1, 2 and 4 syncer replicas sharing the proxies.

For each replica count R (`--replicas`, default 1,2,4), with fresh simulators and a
fresh fake Kubernetes API server (`tests/fakes/kube_api.py`, in the bench process):

1. the fake holds U Services × S endpoints (`bench.discovery.KubeServices`) and the
   Leases: every replica reads one source of truth and contends for the same Leases;
2. R syncer processes (`Bench.start_syncer`: a directory, port and snapshot each), one
   config but for `leader_election.identity`, with `shards` = R (`--shards N`: N for
   every R). One shard is the single Lease (`shards: 1`): one leader writes every proxy;
3. the wait until the replicas are balanced (every shard held, each replica holding
   floor or ceil of shards / R, and seeing R members: no shard moves any more), then
   until every proxy holds every upstream, then `SETTLE`;
4. `limits`' load: `--rate` single-upstream changes a second for `--duration`, open loop;
   change i replaces the first endpoint of service i mod U with an address of its own,
   in one EndpointSlice write, and must reach every proxy.

Per R: the lag until every proxy accepted (`limits`' figures and verdict), each
replica's CPU during the changes and peak RSS, the shards each holds and the proxies it
wrote, POSTs per change per proxy (1.000: no two replicas write one proxy), and, from
each replica's /metrics before and after the changes and its /state, how many proxies
were written by exactly one replica, the holder of their shard (rendezvous hashing of
the proxy's label, as the replicas report it).

All replicas, the simulators and the bench share this machine's CPUs: more replicas
cannot add CPU here. The figure shows how the load is split (CPU and proxies per
replica) and whether the lag holds as R grows, not a speed-up.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
import urllib.error
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.baselines.scenario import Table
from bench.discovery import KUBE_NAMESPACE, KUBE_PORT, KubeServices
from bench.harness import (
    Bench,
    BenchError,
    Metrics,
    Options,
    SyncerProcess,
    proxy_label,
    tuning_flags,
    upstream_name,
)
from bench.limits import (
    SYNC_CHECK,
    bench_cpu_rows,
    catch_up,
    cells,
    changed,
    cold_timeout,
    drive,
    load_rows,
    verdict,
)
from bench.scenarios import MARKER_WATCH, MAX_CHANGES, SETTLE, proxies_setup
from tests.fakes.kube_api import FakeKubeAPI

DEFAULT_REPLICAS = (1, 2, 4)
MAX_REPLICAS = 16
MAX_SHARDS = 256  # the syncer's (leader_election.shards)
LEASE_NAME = "dyups-bench"
# Renewed every second; a replica that cannot renew for 5 s stops writing. Long enough
# that the shared cores never let a Lease lapse during a run (no shard may move while
# measured), short enough that the replicas settle within seconds.
TIMINGS = {"lease_duration": 10.0, "renew_deadline": 5.0, "retry_period": 1.0}
BALANCE_TIMEOUT = 60.0
HELD = "dyups_syncer_shards_held"  # 1 for the leader of the single Lease
MEMBERS = "dyups_syncer_shard_members"  # with shards only
REQUESTS = "dyups_syncer_requests_total"


@dataclass(frozen=True)
class ShardsOptions(Options):
    replicas: tuple[int, ...] = DEFAULT_REPLICAS
    shards: int = 0  # 0: as many as replicas

    def shards_for(self, replicas: int) -> int:
        return self.shards or replicas


@dataclass
class Run:
    """One replica count's figures, in table order; `verdict` goes first."""

    replicas: int
    shards: int
    rows: list[tuple[str, str]] = field(default_factory=list)
    verdict: str = ""

    @property
    def label(self) -> str:
        return f"{_plural(self.replicas, 'replica')}, {_plural(self.shards, 'shard')}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def replica_name(r: int) -> str:
    """Replica r's identity, and its directory in the run's."""
    return f"r{r}"


def election(api_url: str, r: int, shards: int) -> dict[str, Any]:
    """Replica r's `leader_election`: the same for every replica but the identity."""
    return {
        "leader_election": {
            "enabled": True,
            "backend": "kubernetes",
            "shards": shards,
            "lease_name": LEASE_NAME,
            "namespace": KUBE_NAMESPACE,
            "identity": replica_name(r),
            **TIMINGS,
            "client": {"api_url": api_url},
        }
    }


# ----------------------------------------------------------------- reading the replicas


def balanced(held: Sequence[float], members: Sequence[float], shards: int) -> bool:
    """Every shard held (as each replica counts its own), each replica holding floor or
    ceil of shards / replicas, and with shards each seeing every replica as a member:
    nothing moves any more."""
    low, high = shards // len(held), -(-shards // len(held))
    return (
        sum(held) == shards
        and all(low <= h <= high for h in held)
        and (shards == 1 or all(m == len(held) for m in members))
    )


def writers(
    before: Sequence[Metrics], after: Sequence[Metrics], proxies: Sequence[str]
) -> dict[str, list[int]]:
    """Per proxy label, the replicas (by index) whose POSTs to it grew from `before` to
    `after` (each replica's /metrics)."""

    def posts(metrics: Metrics, proxy: str) -> float:
        return metrics.total(REQUESTS, proxy=proxy, method="POST")

    return {
        proxy: [
            r
            for r, (then, now) in enumerate(zip(before, after, strict=True))
            if posts(now, proxy) > posts(then, proxy)
        ]
        for proxy in proxies
    }


def held_shards(state: Mapping[str, Any]) -> list[int]:
    """The shards a replica holds, from its /state (the single Lease: shard 0)."""
    leader = state["leader"]
    if "held" in leader:
        return [int(shard) for shard in leader["held"]]
    return [0] if leader["leading"] else []


def holders(states: Sequence[Mapping[str, Any]], proxies: Sequence[str]) -> dict[str, int | None]:
    """Per proxy label, the replica holding its shard (None: no one, or several), from
    each replica's /state: the shards it holds and, with shards, each proxy's shard."""
    held = [set(held_shards(state)) for state in states]
    shard_of = states[0]["leader"].get("proxies", {})
    out: dict[str, int | None] = {}
    for proxy in proxies:
        shard = shard_of.get(proxy, 0)
        owners = [r for r, shards in enumerate(held) if shard in shards]
        out[proxy] = owners[0] if len(owners) == 1 else None
    return out


def _wait_balanced(bench: Bench, group: Sequence[SyncerProcess], shards: int) -> float:
    """Until `balanced`; returns the seconds from the first replica's start."""

    def done() -> bool:
        try:
            metrics = [syncer.metrics() for syncer in group]
        except (urllib.error.URLError, ConnectionError):
            return False  # not listening yet
        held = [m.total(HELD) for m in metrics]
        return balanced(held, [m.total(MEMBERS) for m in metrics], shards)

    what = f"{shards} shards held by {len(group)} replicas, balanced"
    bench.wait(done, BALANCE_TIMEOUT, what, SYNC_CHECK)
    return time.monotonic() - group[0].started


# ----------------------------------------------------------------- one replica count


def _change(services: KubeServices, opts: Options, i: int) -> float:
    k, servers = changed(i, opts.upstreams, opts.servers, KUBE_PORT)
    return services.set(upstream_name(k), servers)


def _start(
    bench: Bench, opts: ShardsOptions, run: Run, services: KubeServices
) -> list[SyncerProcess]:
    """The replicas, once balanced and every proxy holds every upstream."""
    group = [
        bench.start_syncer(
            opts,
            [services.source()],
            replica=replica_name(r),
            settings=election(services.kube.url, r, run.shards),
        )
        for r in range(run.replicas)
    ]
    settled = _wait_balanced(bench, group, run.shards)
    synced = bench.wait_in_sync(services.spec, cold_timeout(opts.proxies, opts.upstreams))
    run.rows += [
        ("first replica's start → balanced (every shard held, none moving)", f"{settled:.1f} s"),
        (f"first replica's start → {bench.synced_means}", f"{synced:.1f} s"),
    ]
    return group


@dataclass
class Load:
    """The changes and what they cost."""

    rows: list[tuple[str, str]]  # lag and the bench's CPU
    lags: list[float]
    changes: int
    window: float
    cpu: list[float]  # seconds, per replica
    leases: float  # Lease requests a second, all replicas


def _load(bench: Bench, opts: Options, services: KubeServices, group: list[SyncerProcess]) -> Load:
    """`limits`' load, until every proxy has every change (or its timeout)."""
    watches = bench.watches(*MARKER_WATCH)
    kube = services.kube
    cpu0, bench_cpu0 = [s.cpu_seconds() for s in group], bench.cpu_seconds()
    requests0, began = len(kube.requests), time.monotonic()
    written, late = drive(bench, functools.partial(_change, services, opts), opts)
    window = time.monotonic() - began
    cpu = [s.cpu_seconds() - c for s, c in zip(group, cpu0, strict=True)]
    leases = sum(r.resource == "leases" for r in kube.requests[requests0:]) / window
    cpu_rows = bench_cpu_rows(bench, bench_cpu0, window)
    arrived = catch_up(bench, watches, len(written), opts.upstreams)
    rows, lags = load_rows(bench, written, late, arrived)
    return Load([*rows, *cpu_rows], lags, len(written), window, cpu, leases)


def _run(bench: Bench, opts: ShardsOptions, run: Run) -> None:
    services = KubeServices(bench.enter_context(FakeKubeAPI()), opts.upstreams, opts.servers)
    group = _start(bench, opts, run, services)
    bench.sleep(SETTLE)
    bench.reset_counts()
    before = [syncer.metrics() for syncer in group]
    load = _load(bench, opts, services, group)
    after = [syncer.metrics() for syncer in group]
    states = [syncer.state() for syncer in group]
    proxies = [proxy_label(i) for i in range(opts.proxies)]
    wrote = writers(before, after, proxies)
    owner = holders(states, proxies)
    alone = [p for p in proxies if owner[p] is not None and wrote[p] == [owner[p]]]
    posts = sum(sim.stats.posts for sim in bench.sims)
    pairs = load.changes * opts.proxies
    run.rows += [
        *load.rows,
        (
            "POSTs per change per proxy (every replica's)",
            f"{posts / pairs:.3f} ({posts} / {pairs})",
        ),
        (
            "proxies written during the changes by exactly one replica, the holder of their shard",
            f"{len(alone)} of {len(proxies)}" + _exceptions(proxies, alone, wrote, owner),
        ),
        *_replica_rows(group, load, states, wrote),
    ]
    passed, run.verdict = verdict(load.lags, load.changes)
    if passed and len(alone) < len(proxies):
        run.verdict = f"no: {len(proxies) - len(alone)} proxies not written by one replica"


def _replica_rows(
    group: Sequence[SyncerProcess],
    load: Load,
    states: Sequence[Mapping[str, Any]],
    wrote: Mapping[str, list[int]],
) -> list[tuple[str, str]]:
    written = [sum(r in w for w in wrote.values()) for r in range(len(group))]
    return [
        ("shards held (their indexes), per replica", _per_replica(_shards_text(states))),
        ("proxies written during the changes, per replica", _per_replica(map(str, written))),
        (
            "CPU during the changes, per replica, % of one core",
            _per_replica(f"{100 * c / load.window:.0f} %" for c in load.cpu),
        ),
        (
            "CPU during the changes, all replicas, % of one core",
            f"{100 * sum(load.cpu) / load.window:.0f} %",
        ),
        ("Lease requests to the fake during the changes, all replicas", f"{load.leases:.1f}/s"),
        (
            "peak RSS (VmHWM), per replica",
            _per_replica(f"{s.peak_rss_mib():.0f} MiB" for s in group),
        ),
        ("warnings and errors logged, per replica", _per_replica(s.log_summary() for s in group)),
    ]


def _shards_text(states: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"[{', '.join(map(str, held_shards(state)))}]" for state in states]


def _per_replica(values: Iterable[str]) -> str:
    """Values for r0, r1, …, named."""
    return " / ".join(f"r{r} {value}" for r, value in enumerate(values))


def _exceptions(
    proxies: Sequence[str],
    alone: Sequence[str],
    wrote: Mapping[str, list[int]],
    owner: Mapping[str, int | None],
) -> str:
    """The proxies that were not, with who wrote them and who held their shard."""
    others = [p for p in proxies if p not in alone]
    return "".join(
        f"; {p}: written by {wrote[p] or 'none'}, shard held by {owner[p]}" for p in others[:5]
    )


def measure(opts: ShardsOptions, replicas: int) -> Run:
    """One replica count, with fresh simulators, fake and syncers; a BenchError (a
    timeout, a syncer died) fails it and the next one goes on."""
    run = Run(replicas, opts.shards_for(replicas))
    try:
        with Bench(opts.proxies, opts.sim_processes) as bench:
            _run(bench, opts, run)
    except BenchError as e:
        print(f"shards: {run.label}: {e}", file=sys.stderr, flush=True)
        run.verdict = f"no: {str(e).splitlines()[0]}"
    return run


def shards(opts: Options) -> Table:
    if not isinstance(opts, ShardsOptions):
        opts = ShardsOptions(**dataclasses.asdict(opts))
    if not 1 <= round(opts.rate * opts.duration) <= MAX_CHANGES:
        raise BenchError(f"shards: --rate × --duration must make 1 to {MAX_CHANGES} changes")
    done = []
    for replicas in opts.replicas:
        run = measure(opts, replicas)
        print(f"shards: {run.label}: {run.verdict}", file=sys.stderr, flush=True)
        done.append(run)
    return Table(
        f"shards, {opts.proxies} proxies × {opts.upstreams:,} upstreams × {opts.servers}, "
        f"{opts.rate:g} changes/s for {opts.duration:g} s",
        command("shards", opts),
        setup(opts),
        columns=[run.label for run in done],
        cells=cells(done),
    )


# ----------------------------------------------------------------- descriptions


def command(scenario: str, opts: Options) -> str:
    replicas = opts.replicas if isinstance(opts, ShardsOptions) else DEFAULT_REPLICAS
    line = f"python -m bench {scenario} --replicas {','.join(map(str, replicas))}"
    if isinstance(opts, ShardsOptions) and opts.shards:
        line += f" --shards {opts.shards}"
    line += f" --proxies {opts.proxies} --upstreams {opts.upstreams} --servers {opts.servers}"
    line += f" --rate {opts.rate:g} --duration {opts.duration:g}"
    return line + tuning_flags(opts)  # the poll interval only differs for file sources


def setup(opts: Options) -> str:
    debounce = "100 ms (default)" if opts.debounce is None else f"{opts.debounce * 1000:g} ms"
    shards = "as many shards as replicas"
    if isinstance(opts, ShardsOptions) and opts.shards:
        shards = f"{opts.shards} shards"
    timings = ", ".join(f"{name} {value:g} s" for name, value in TIMINGS.items())
    return (
        f"For each replica count R: {proxies_setup(opts)}; {opts.where_simulators()}; "
        f"{opts.upstreams} Services × {opts.servers} endpoints "
        "on the fake Kubernetes API server in the bench process, which also holds the "
        f"Leases; R syncer processes, one config but for the identity, {shards} "
        f"(one shard: the single Lease), {timings}; debounce {debounce}; propagation kick "
        f"{'on' if opts.kick else 'off'}. Once the replicas are balanced and every proxy "
        f"holds every upstream, {SETTLE:g} s of rest, then {opts.rate:g} single-upstream "
        f"changes a second for {opts.duration:g} s, open loop (change i replaces the first "
        "endpoint of service i mod U with an address of its own, in one EndpointSlice "
        "write). Lag: from the stamp before the write until the last proxy accepted the "
        "change. Which replica wrote a proxy: the POSTs to it each replica counted "
        "(/metrics) during the changes; its shard's holder: the replicas' /state. "
        f"All replicas, the simulators and the bench share this machine's {os.cpu_count()} "
        "CPUs: more replicas cannot add CPU here, so the figure shows how the load is "
        "split (CPU and proxies per replica) and whether the lag holds, not a speed-up."
    )
