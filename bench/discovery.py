"""Scenarios with a service-discovery source: `kube-rollout` and `consul-flips`.

The fakes from the tests (`tests/fakes/`) play the Kubernetes API server and the
Consul agent, in the bench process, on loopback (the simulated proxies run in child
processes unless `--sim-processes 0`); the syncer reads them with the
real client libraries. The bench changes their state through the fakes' controls,
stamps `time.monotonic()` just before each change, and measures from that stamp to
the simulators' `applied` events, like `change`.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.harness import (
    NGINX_WORKERS,
    READ_MSG_TIMEOUT,
    SHM_ZONE_SIZE,
    Bench,
    BenchError,
    Metrics,
    Options,
    PostLog,
    Result,
    SyncerProcess,
    answer_times_row,
    base_spec,
    percentiles_ms,
    tuning_flags,
    upstream_name,
)
from tests.fakes.consul_agent import FakeConsulAgent, RecordedRequest
from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.kube_objects import JSON, endpoint, endpoint_port, endpoint_slice, micro_time
from tests.fakes.kube_objects import service as kube_service

SYNC_TIMEOUT = 180.0  # a whole first sync, or catching up after the changes
SETTLE = 1.0  # after the first sync: trailing verify reads and kicks
DRAIN = 2 * READ_MSG_TIMEOUT  # every nginx worker has applied every accepted POST
ALIVE_EVERY = 1.0  # the drivers check that the syncer still runs this often
DRIVER_SLACK = 2.0  # a driver stops at this × the duration, done or not
KUBE_NAMESPACE = "bench"
KUBE_PORT = 8080  # every EndpointSlice's one port: the port of `base_servers`
OPT_IN = "dyups-syncer.io/upstream"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
MAX_SERVICES = 4000  # kube-rollout: pod addresses 10.0-15.x.y (old), 10.16-31.x.y (new)
ISOLATION = 2.0  # consul-flips: a service is not flipped again within this many seconds
PICKS = 50  # consul-flips: random picks before taking any service
ROUND_GAP = 0.03  # POSTs to one proxy closer than this belong to one write round
_SERVER = re.compile(r"server (\S+?)[ ;]")

State = Hashable
Versions = dict[str, list[tuple[float, State]]]  # upstream → (stamp, state), [0]: initial


def server_addresses(body: str) -> list[str]:
    return _SERVER.findall(body)


def servers_state(_name: str, body: str) -> State:
    """An upstream's state, for `lag_figures`: the set of its servers."""
    return frozenset(server_addresses(body))


def _rows_common(
    bench: Bench, syncer: SyncerProcess, cpu: float, window: float, bench_cpu: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    return [
        *bench.proxy_rows(syncer),
        ("syncer CPU in the change window, % of one core", f"{100 * cpu / window:.1f} %"),
        ("syncer CPU (change window)", f"{cpu:.2f} s"),
        ("syncer CPU (since start)", f"{syncer.cpu_seconds():.2f} s"),
        *bench_cpu,
        ("syncer warnings and errors logged", syncer.log_summary()),
    ]


def _bench_cpu_rows(bench: Bench, since: tuple[float, float]) -> list[tuple[str, str]]:
    return bench.cpu_rows(since, "fake, simulators, driver", "fake, driver", ", change window")


# ----------------------------------------------------------------- lag from the POSTs


@dataclass
class LagFigures:
    per_proxy: list[float]  # one per (change, proxy) a POST carried
    all_proxies: list[float]  # one per change: until the last proxy accepted it
    changes: int
    missing: int  # (change, proxy) pairs no POST carried, and not undone either
    coalesced: int  # (change, proxy) pairs first carried by a POST of a later change
    undone: int  # (change, proxy) pairs undone before a POST carried them (no POST needed)
    unexpected: int  # POSTs carrying no state the upstream had since the proxy's last one
    repeats: int  # POSTs whose servers equal the previous ones on that proxy
    close: int  # consecutive POSTs of one upstream to one proxy closer than the debounce
    closest: float | None
    posts: int
    by_name: dict[str, list[float]]  # the per-proxy lags of each upstream
    rounds: list[int]  # POSTs per write round (a burst of POSTs to one proxy)
    span: float  # seconds from the first to the last POST, over all proxies


def lag_figures(
    versions: Versions,
    logs: Sequence[PostLog],
    state_of: Callable[[str, str], State],
    debounce: float,
) -> LagFigures:
    """Match each proxy's POSTs of each upstream to the states the bench produced.

    Walks each proxy's POSTs and the upstream's changes in time order. A POST carries
    the latest change (stamped no later than its acceptance) whose state it has; it
    accepts that change and every earlier one still pending (coalesced). A change
    whose state the proxy already holds when it is made (a flip undone before it was
    posted) needs no POST: it and the pending changes before it count as undone.
    """
    out = LagFigures([], [], 0, 0, 0, 0, 0, 0, 0, None, 0, {}, [], 0.0)
    accepted_by_proxy: list[list[float]] = [[] for _ in logs]
    for name, states in versions.items():
        out.changes += len(states) - 1
        accepted: list[list[float]] = [[] for _ in states]
        for log, times in zip(logs, accepted_by_proxy, strict=True):
            posts = log.posts(name)
            # Changes before POSTs at the same instant; 0 marks a change, 1 a POST.
            timeline = sorted(
                [(stamp, 0, j, "") for j, (stamp, _) in enumerate(states) if j > 0]
                + [(at, 1, k, body) for k, (at, body) in enumerate(posts)]
            )
            held, last_at = states[0][1], None
            pending: list[int] = []
            for at, kind, index, body in timeline:
                if kind == 0:
                    pending.append(index)
                    if states[index][1] == held:
                        out.undone += len(pending)
                        pending.clear()
                    continue
                out.posts += 1
                times.append(at)
                if last_at is not None:
                    gap = at - last_at
                    out.close += gap < debounce
                    out.closest = gap if out.closest is None else min(out.closest, gap)
                last_at = at
                state = state_of(name, body)
                out.repeats += state == held
                held = state
                carried = [i for i in pending if states[i][1] == state]
                if not carried:
                    out.unexpected += 1
                    continue
                j = max(carried)
                for i in [i for i in pending if i <= j]:
                    accepted[i].append(at)
                    out.per_proxy.append(at - states[i][0])
                    out.by_name.setdefault(name, []).append(at - states[i][0])
                    out.coalesced += i < j
                pending = [i for i in pending if i > j]
            out.missing += len(pending)
        for i in range(1, len(states)):
            if len(accepted[i]) == len(logs):
                out.all_proxies.append(max(accepted[i]) - states[i][0])
    # A round is a plan and its writes: POSTs to one proxy less than ROUND_GAP apart.
    for times in accepted_by_proxy:
        times.sort()
        if times:
            out.span = max(out.span, times[-1] - times[0])
            out.rounds.append(1)
        for before, after in itertools.pairwise(times):
            if after - before < ROUND_GAP:
                out.rounds[-1] += 1
            else:
                out.rounds.append(1)
    return out


def lag_rows(lags: LagFigures, proxies: int, debounce: float) -> list[tuple[str, str]]:
    pairs = lags.changes * proxies
    return [
        ("upstream changes", str(lags.changes)),
        (
            "lag, each (change, proxy): p50 / p90 / p99 / max (ms)",
            percentiles_ms(lags.per_proxy),
        ),
        (
            "lag until the last proxy accepted: p50 / p90 / p99 / max (ms)",
            percentiles_ms(lags.all_proxies),
        ),
        (
            "changes accepted by every proxy",
            f"{len(lags.all_proxies)} of {lags.changes}"
            + (f" ({lags.missing} (change, proxy) pairs never)" if lags.missing else ""),
        ),
        (
            "(change, proxy) pairs undone before they were posted (no POST needed; no lag)",
            str(lags.undone),
        ),
        (
            "POSTs per upstream change per proxy",
            f"{lags.posts / pairs:.3f} ({lags.posts} POSTs / {pairs})" if pairs else "—",
        ),
        (
            "(change, proxy) pairs first carried by a later change's POST (coalesced)",
            str(lags.coalesced),
        ),
        (
            f"POSTs of one upstream to one proxy < {debounce * 1000:g} ms (the debounce) apart",
            f"{lags.close}; closest pair "
            + ("—" if lags.closest is None else f"{lags.closest * 1000:.1f} ms"),
        ),
        (
            f"write rounds (POSTs to one proxy less than {ROUND_GAP * 1000:g} ms apart): "
            "per second per proxy; POSTs per round, mean / max",
            f"{len(lags.rounds) / proxies / lags.span:.1f}; "
            f"{sum(lags.rounds) / len(lags.rounds):.1f} / {max(lags.rounds)}"
            if lags.rounds and lags.span
            else "—",
        ),
        (
            "lag p99 by upstream, names in sorted order, in quarters (ms)",
            " / ".join(f"{1000 * q:.1f}" for q in _quarters(lags.by_name)) or "—",
        ),
        ("POSTs repeating the servers the proxy already had", str(lags.repeats)),
        ("POSTs carrying no pending state (stale or unknown)", str(lags.unexpected)),
    ]


def _quarters(by_name: Mapping[str, list[float]]) -> list[float]:
    """The p99 lag of each quarter of the upstreams, in name order: a plan writes in name
    order, so a batch that keeps being cut short serves the first names first."""
    names = sorted(by_name)
    out = []
    for q in range(4):
        lags = sorted(
            x for n in names[q * len(names) // 4 : (q + 1) * len(names) // 4] for x in by_name[n]
        )
        if lags:
            out.append(lags[max(0, math.ceil(0.99 * len(lags)) - 1)])
    return out


def wait_final(
    bench: Bench,
    logs: Sequence[PostLog],
    final: Mapping[str, State],
    state_of: Callable[[str, str], State],
    timeout: float,
) -> float | None:
    """Until every proxy has applied the final state of every changed upstream; returns
    time.monotonic() when that was seen, or None after `timeout`."""
    done: list[set[str]] = [set() for _ in logs]

    def all_final() -> bool:
        for log, names in zip(logs, done, strict=True):
            log.update()
            for name in log.touched:
                if name in final and state_of(name, log.latest[name]) == final[name]:
                    names.add(name)
                else:
                    names.discard(name)
            log.touched.clear()
        return all(len(names) == len(final) for names in done)

    deadline = time.monotonic() + timeout
    while not all_final():
        if time.monotonic() > deadline:
            return None
        bench.check_alive()
        time.sleep(0.05)
    return time.monotonic()


def final_states(versions: Versions) -> dict[str, State]:
    return {name: states[-1][1] for name, states in versions.items() if len(states) > 1}


def catch_up_rows(
    what: str, caught_up: float | None, began: float, ended: float, cpu_done: float
) -> list[tuple[str, str]]:
    if caught_up is None:
        return [(f"{what} → every proxy accepted everything", f"not within {SYNC_TIMEOUT:g} s")]
    return [
        (f"{what} → every proxy accepted everything", f"{caught_up - ended:.2f} s"),
        (
            f"syncer CPU from the first {what.split()[1]} until everything was accepted, "
            "% of one core",
            f"{100 * cpu_done / (caught_up - began):.1f} %",
        ),
    ]


def cold_sync(bench: Bench, syncer: SyncerProcess, names: set[str]) -> float:
    trackers = bench.wait_synced(names, SYNC_TIMEOUT)
    synced = max(max(t.first.values()) for t in trackers) - syncer.started
    bench.sleep(SETTLE)
    for sim in bench.sims:
        sim.reset_stats()
    return synced


def lateness_row(late: list[float]) -> tuple[str, str]:
    return (
        "driver behind its schedule: p50 / p90 / p99 / max (ms)",
        percentiles_ms([max(0.0, x) for x in late]),
    )


def calls_row(calls: list[float]) -> tuple[str, str]:
    """The lag runs from just before the call that changes the fake: it includes this."""
    return (
        "the fake's change call (in the lag): p50 / p90 / p99 / max (ms)",
        percentiles_ms(calls),
    )


def metric_rows(metrics: Metrics) -> list[tuple[str, str]]:
    """The syncer's own view: its sync lag, from the origin's change time."""
    lag = "dyups_syncer_sync_lag_seconds"
    count = metrics.total(f"{lag}_count")
    total = metrics.total(f"{lag}_sum")
    fast = metrics.total(f"{lag}_bucket", le="0.25")
    return [
        (
            "the syncer's own sync_lag metric (since start): count, mean, ≤ 250 ms",
            f"{count:.0f}, {1000 * total / count:.1f} ms, {100 * fast / count:.1f} %"
            if count
            else "no observations",
        ),
        answer_times_row(metrics),
    ]


# ----------------------------------------------------------------- Kubernetes objects


def _service_name(k: int) -> str:
    return f"web-{k:05d}"


def kube_source(kube: FakeKubeAPI) -> dict[str, Any]:
    """The syncer's source: the fake, every other setting at its default."""
    return {"type": "kubernetes", "client": {"api_url": kube.url}}


def opt_in(kube: FakeKubeAPI, k: int) -> None:
    """Service k, opted in as upstream k (`upstream_name`)."""
    annotations = {OPT_IN: upstream_name(k)}
    kube.apply(kube_service(KUBE_NAMESPACE, _service_name(k), annotations=annotations))


def _slice(k: int, eps: list[JSON], wall: float) -> JSON:
    """Service k's one EndpointSlice; its trigger time `wall` (the time of the change,
    as the EndpointSlice controller sets it) is where the syncer's sync_lag starts."""
    return endpoint_slice(
        KUBE_NAMESPACE,
        f"{_service_name(k)}-ep",
        service=_service_name(k),
        endpoints=eps,
        ports=[endpoint_port(KUBE_PORT)],
        annotations={TRIGGER_TIME: micro_time(datetime.fromtimestamp(wall, UTC))},
    )


class KubeServices:
    """`services` Services opted in as upstreams u00000…, each with one EndpointSlice of
    ready endpoints: the upstreams of `base_spec` (servers `10.a.b.c:8080`), on the fake
    API server, for the Kubernetes source."""

    def __init__(self, kube: FakeKubeAPI, services: int, endpoints: int) -> None:
        self.kube = kube
        self.spec = base_spec(services, endpoints)
        self._index = {name: k for k, name in enumerate(self.spec)}
        wall = time.time()
        for k, servers in enumerate(self.spec.values()):
            opt_in(kube, k)
            kube.apply(_slice(k, _ready(servers), wall))

    def source(self) -> dict[str, Any]:
        return kube_source(self.kube)

    def set(self, upstream: str, servers: Sequence[str]) -> float:
        """The endpoints of the upstream's service become `servers` (`address:KUBE_PORT`
        each), in one slice write; returns time.monotonic() just before the fake's
        change call."""
        self.spec[upstream] = list(servers)
        eps = _ready(servers)
        wall, stamp = time.time(), time.monotonic()
        self.kube.apply(_slice(self._index[upstream], eps, wall))
        return stamp


def _ready(servers: Sequence[str]) -> list[JSON]:
    """Ready endpoints of `address:KUBE_PORT` servers (a slice has one port for all)."""
    eps = []
    for server in servers:
        address, _, port = server.rpartition(":")
        if port != str(KUBE_PORT):
            raise BenchError(f"{server}: an EndpointSlice here serves port {KUBE_PORT} only")
        eps.append(endpoint(address))
    return eps


# ----------------------------------------------------------------- kube-rollout


def pod_address(k: int, j: int, *, new: bool) -> str:
    """Pod j of service k; the replacement pods live in 10.16.0.0/12."""
    return f"10.{(16 if new else 0) + k // 250}.{k % 250}.{j + 1}"


def rollout_progress(body: str, pods: int) -> int:
    """Steps of the rollout an upstream's servers show: new pods in, plus old pods out.
    0 at the start, 2 × pods at the end; each upstream change moves it by one."""
    addresses = server_addresses(body)
    new = sum(1 for a in addresses if int(a.split(".")[1]) >= 16)
    return new + pods - (len(addresses) - new)


def rollout_slice(k: int, pods: int, done: int, wall: float) -> JSON:
    """Service k's EndpointSlice after `done` steps of its rolling restart.

    Pod j is replaced in three steps: a new ready pod joins; the old pod j turns
    terminating (not ready, still serving); the old pod j leaves the slice. Only the
    first two change the upstream.
    """
    j, stage = divmod(done, 3)
    eps: list[JSON] = []
    for p in range(pods):
        pod = f"{_service_name(k)}-{p}"
        if p < j or (p == j and stage >= 1):
            eps.append(endpoint(pod_address(k, p, new=True), pod=f"{pod}-b", node_name="node-b"))
        if p > j or (p == j and stage <= 1):
            eps.append(endpoint(pod_address(k, p, new=False), pod=f"{pod}-a", node_name="node-a"))
        elif p == j and stage == 2:
            eps.append(
                endpoint(
                    pod_address(k, p, new=False),
                    ready=False,
                    serving=True,
                    terminating=True,
                    pod=f"{pod}-a",
                    node_name="node-a",
                )
            )
    return _slice(k, eps, wall)


def rollout_progress_of(done: int) -> int:
    j, stage = divmod(done, 3)
    return 2 * j + min(stage, 2)


def kube_rollout(opts: Options) -> Result:
    services, pods, steps = opts.upstreams, opts.servers, 3 * opts.servers
    if services > MAX_SERVICES:
        raise BenchError(f"kube-rollout: at most {MAX_SERVICES} services")
    interval = opts.duration / steps  # between two steps of one service
    with Bench(opts.proxies, opts.processes) as bench:
        kube = bench.enter_context(FakeKubeAPI())
        for k in range(services):
            opt_in(kube, k)
            kube.apply(rollout_slice(k, pods, 0, time.time()))
        syncer = bench.start_syncer(opts, [kube_source(kube)])
        names = {upstream_name(k) for k in range(services)}
        synced = cold_sync(bench, syncer, names)
        logs = [PostLog(sim) for sim in bench.sims]
        # Services start in turn, spread over one step interval: a steady write rate.
        schedule = sorted(
            ((k / services + i) * interval, k, i + 1) for k in range(services) for i in range(steps)
        )
        versions: Versions = {upstream_name(k): [(float("-inf"), 0)] for k in range(services)}
        late: list[float] = []
        calls: list[float] = []  # how long each change took the fake (its lock is contended)
        events0 = sum(kube.events_sent.values())
        cpu0, bench_cpu0, began = syncer.cpu_seconds(), bench.cpu_seconds(), time.monotonic()
        checked, deadline, writes = began, began + DRIVER_SLACK * opts.duration, 0
        for due, k, done in schedule:
            if (left := began + due - time.monotonic()) > 0:
                time.sleep(left)
            if time.monotonic() > deadline:
                break  # the bench process cannot keep up: report what was done
            writes += 1
            wall, stamp = time.time(), time.monotonic()
            late.append(stamp - began - due)
            kube.apply(rollout_slice(k, pods, done, wall))
            calls.append(time.monotonic() - stamp)
            progress = rollout_progress_of(done)
            if progress != versions[upstream_name(k)][-1][1]:
                versions[upstream_name(k)].append((stamp, progress))
            if stamp - checked > ALIVE_EVERY:
                bench.check_alive()
                checked = stamp
        ended = time.monotonic()
        window = ended - began
        cpu = syncer.cpu_seconds() - cpu0
        bench_cpu = _bench_cpu_rows(bench, bench_cpu0)

        def state_of(_name: str, body: str) -> State:
            return rollout_progress(body, pods)

        caught_up = wait_final(bench, logs, final_states(versions), state_of, SYNC_TIMEOUT)
        cpu_done = syncer.cpu_seconds() - cpu0
        bench.sleep(DRAIN)
        for log in logs:
            log.update()
        lags = lag_figures(versions, logs, state_of, opts.debounce_s)
        metrics = bench.metrics()
        requests = Counter(r.verb for r in kube.requests)
        rows = [
            (
                "cold sync (start → every worker of every proxy holds every upstream)",
                f"{synced:.2f} s",
            ),
            (
                "rolling restart",
                f"{services} services × {pods} pods, each pod replaced in 3 slice writes "
                f"({interval * 1000:.0f} ms apart per service); {writes} of "
                f"{len(schedule)} slice writes made, in {window:.1f} s ({writes / window:.0f}/s)",
            ),
            lateness_row(late),
            calls_row(calls),
            *lag_rows(lags, opts.proxies, opts.debounce_s),
            *catch_up_rows("last write", caught_up, began, ended, cpu_done),
            *metric_rows(metrics),
            (
                "fake API: watch events sent in the change window and after; requests since start",
                f"{sum(kube.events_sent.values()) - events0}; "
                + (", ".join(f"{v} {n}" for v, n in sorted(requests.items())) or "none"),
            ),
            *_rows_common(bench, syncer, cpu, window, bench_cpu),
        ]
    return Result(title("kube-rollout", opts), command("kube-rollout", opts), setup(opts), rows)


# ----------------------------------------------------------------- consul-flips


def instance_address(k: int, i: int) -> str:
    return f"10.{k // 250}.{k % 250}.{i + 1}"


def _passing(k: int, status: list[bool]) -> frozenset[str]:
    return frozenset(f"{instance_address(k, i)}:8080" for i, ok in enumerate(status) if ok)


def _pick(
    rng: random.Random, statuses: list[list[bool]], last: list[float], now: float
) -> tuple[int, int]:
    """A random instance of a service not flipped in the last ISOLATION seconds if one
    turns up in PICKS tries (with few services there may be none), never the last
    passing one of its service (an empty service is held, not posted)."""
    for _ in range(PICKS):
        k = rng.randrange(len(statuses))
        if now - last[k] >= ISOLATION:
            break
    status = statuses[k]
    i = rng.randrange(len(status))
    if status[i] and sum(status) == 1:
        i = status.index(False)
    return k, i


def _request_rows(
    label: str, requests: Sequence[RecordedRequest], seconds: float | None
) -> list[tuple[str, str]]:
    """Requests the fake answered (a blocking query counts when it returns)."""
    blocking = sum(1 for r in requests if r.blocking)
    kinds = Counter(
        f"{r.endpoint} {'blocking' if r.blocking else 'non-blocking'} ({r.outcome})"
        for r in requests
    )
    count = f"{blocking} blocking / {len(requests) - blocking} non-blocking"
    if seconds is not None:
        count = f"{len(requests) / seconds:.2f}/s: {count} in {seconds:.1f} s"
    return [
        (f"requests to Consul answered, {label}", count),
        (
            f"requests to Consul answered, {label}: by endpoint (outcome)",
            ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()) or "none",
        ),
    ]


def consul_flips(opts: Options) -> Result:
    services, instances = opts.upstreams, opts.servers
    if instances < 2:
        raise BenchError("consul-flips: at least 2 instances per service")
    flips = round(opts.rate * opts.duration)
    rng = random.Random(7)
    with Bench(opts.proxies, opts.processes) as bench:
        agent = bench.enter_context(FakeConsulAgent())
        for k in range(services):
            for i in range(instances):
                agent.register(
                    f"node-{i:03d}",
                    f"10.250.0.{i + 1}",
                    upstream_name(k),
                    f"{upstream_name(k)}-{i}",
                    port=8080,
                    tags=["dyups"],
                    service_address=instance_address(k, i),
                )
        source = {"type": "consul", "address": f"127.0.0.1:{agent.port}"}
        started = len(agent.requests)
        syncer = bench.start_syncer(opts, [source])
        names = {upstream_name(k) for k in range(services)}
        synced = cold_sync(bench, syncer, names)
        cold_requests = agent.requests[started:]
        logs = [PostLog(sim) for sim in bench.sims]
        statuses = [[True] * instances for _ in range(services)]
        last = [float("-inf")] * services
        versions: Versions = {
            upstream_name(k): [(float("-inf"), _passing(k, statuses[k]))] for k in range(services)
        }
        late: list[float] = []
        calls: list[float] = []  # how long each change took the fake (its lock is contended)
        before = len(agent.requests)
        cpu0, bench_cpu0, began = syncer.cpu_seconds(), bench.cpu_seconds(), time.monotonic()
        checked, deadline, made, crowded = began, began + DRIVER_SLACK * opts.duration, 0, 0
        for n in range(flips):
            due = n / opts.rate
            if (left := began + due - time.monotonic()) > 0:
                time.sleep(left)
            if time.monotonic() > deadline:
                break  # the fake cannot keep up: report what was done
            made += 1
            k, i = _pick(rng, statuses, last, time.monotonic())
            crowded += time.monotonic() - last[k] < ISOLATION
            statuses[k][i] = not statuses[k][i]
            stamp = last[k] = time.monotonic()
            late.append(stamp - began - due)
            agent.set_status(f"{upstream_name(k)}-{i}", "passing" if statuses[k][i] else "critical")
            calls.append(time.monotonic() - stamp)
            versions[upstream_name(k)].append((stamp, _passing(k, statuses[k])))
            if stamp - checked > ALIVE_EVERY:
                bench.check_alive()
                checked = stamp
        ended = time.monotonic()
        window = ended - began
        cpu = syncer.cpu_seconds() - cpu0
        bench_cpu = _bench_cpu_rows(bench, bench_cpu0)
        flip_requests = agent.requests[before:]

        caught_up = wait_final(bench, logs, final_states(versions), servers_state, SYNC_TIMEOUT)
        cpu_done = syncer.cpu_seconds() - cpu0
        bench.sleep(DRAIN)
        for log in logs:
            log.update()
        lags = lag_figures(versions, logs, servers_state, opts.debounce_s)

        # At rest: only blocking queries should be open, and none should come back.
        rest_from, rest_cpu0 = len(agent.requests), syncer.cpu_seconds()
        rest_bench0, rest_began = time.process_time(), time.monotonic()
        bench.sleep(opts.rest)
        rest = time.monotonic() - rest_began
        rest_requests = agent.requests[rest_from:]
        rest_cpu = syncer.cpu_seconds() - rest_cpu0
        rest_bench = time.process_time() - rest_bench0
        metrics = bench.metrics()
        rows = [
            (
                "cold sync (start → every worker of every proxy holds every upstream)",
                f"{synced:.2f} s",
            ),
            *_request_rows("cold sync", cold_requests, None),
            (
                "health flips",
                f"{made} of {flips} made (passing ↔ critical), in {window:.1f} s "
                f"({made / window:.1f}/s), "
                f"{crowded} of them within {ISOLATION:g} s of the service's previous flip",
            ),
            lateness_row(late),
            calls_row(calls),
            *lag_rows(lags, opts.proxies, opts.debounce_s),
            *catch_up_rows("last flip", caught_up, began, ended, cpu_done),
            *_request_rows("during the flips", flip_requests, window),
            *_request_rows("at rest", rest_requests, rest),
            ("blocking queries open at the end of the rest", str(agent.open_blocking)),
            ("syncer CPU at rest, % of one core", f"{100 * rest_cpu / rest:.2f} %"),
            (
                "bench process CPU at rest (the fake's idle cost)",
                f"{100 * rest_bench / rest:.1f} %",
            ),
            *metric_rows(metrics),
            *_rows_common(bench, syncer, cpu, window, bench_cpu),
        ]
    return Result(title("consul-flips", opts), command("consul-flips", opts), setup(opts), rows)


# ----------------------------------------------------------------- descriptions


def command(scenario: str, opts: Options) -> str:
    line = f"python -m bench {scenario} --proxies {opts.proxies}"
    line += f" --upstreams {opts.upstreams} --servers {opts.servers} --duration {opts.duration:g}"
    if scenario == "consul-flips":
        line += f" --rate {opts.rate:g} --rest {opts.rest:g}"
    return line + tuning_flags(opts)  # the poll interval only differs for file sources


def title(scenario: str, opts: Options) -> str:
    members = "pods" if scenario == "kube-rollout" else "instances"
    out = (
        f"{scenario}, {opts.proxies} proxies, {opts.upstreams} services × {opts.servers} {members}"
    )
    return out if opts.kick else f"{out}, kick off"


def setup(opts: Options) -> str:
    debounce = "100 ms (default)" if opts.debounce is None else f"{opts.debounce * 1000:g} ms"
    return (
        f"{opts.proxies} simulated proxies ({NGINX_WORKERS} nginx workers, "
        f"{SHM_ZONE_SIZE // 2**20} MiB zone, read_msg_timeout {READ_MSG_TIMEOUT:g} s); "
        f"debounce {debounce}; propagation kick {'on' if opts.kick else 'off'}; "
        f"the fake runs in the bench process; {opts.where_simulators()}."
    )
