"""`churn`: `--rate` (500) endpoint events a second for `--duration` (60 s), 10 proxies,
200 upstreams × 10 servers; the issue: "500 endpoint events/s for 60 s with ≤ 1 core and
lag p99 ≤ 1 s".

Event i is due at i / rate s after the window opens (open loop: it is made then, or as
soon as the driver can). It replaces one random server of one random upstream (seed 3)
with an address of its own (`churn_address`), so no state ever comes back. The events
reach the syncer through `--source`:

* `kube` (the default; an endpoint event is an EndpointSlice event): U Services opted
  in, each with one EndpointSlice of S ready endpoints, on the fake API server in the
  bench process (`bench.discovery.KubeServices`). Each event is one slice write, with
  one endpoint replaced: one watch event for the syncer.
* `file`: the file source, rewritten at most every `WRITE_EVERY` (its poll interval)
  with every event due by then. It re-reads and validates the whole file on each write
  (76 % of the syncer's CPU in a profile at 200 × 10): it measures YAML parsing more
  than the syncer.

Each event is one upstream change, stamped just before the write that carries it (events
of one file write share its stamp). Lag, POSTs, coalescing and write rounds are matched
to the events as in the discovery scenarios (`bench.discovery.lag_figures`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bench import discovery, scenarios
from bench.discovery import (
    ALIVE_EVERY,
    DRAIN,
    DRIVER_SLACK,
    SYNC_TIMEOUT,
    KubeServices,
    Versions,
    calls_row,
    catch_up_rows,
    cold_sync,
    final_states,
    lag_figures,
    lag_rows,
    lateness_row,
    metric_rows,
    servers_state,
    wait_final,
)
from bench.harness import (
    Bench,
    BenchError,
    Metrics,
    Options,
    PostLog,
    Result,
    answer_times_row,
    base_spec,
    upstream_yaml,
)
from tests.fakes.kube_api import FakeKubeAPI

Source = Literal["kube", "file"]
SOURCES: dict[Source, str] = {
    "kube": "Kubernetes source (EndpointSlices)",
    "file": "file source",
}
WRITE_EVERY = 0.005  # the file is rewritten at most this often
MAX_EVENTS = 127 * 65536  # one address per event, 10.128.0.0 – 10.254.255.255
SEED = 3


@dataclass(frozen=True)
class ChurnOptions(Options):
    source: Source = "kube"


def churn_address(i: int) -> str:
    """The server address event `i` brings in: unique, so no state comes back. Port
    8080, the base servers' (an EndpointSlice has one port for all its endpoints)."""
    return f"10.{128 + i // 65536}.{i // 256 % 256}.{i % 256}:8080"


# ----------------------------------------------------------------- where events go


Batch = Sequence[tuple[str, tuple[str, ...]]]  # (upstream, its servers after the event)


class Target(Protocol):
    """Where the events go: `write` makes a batch of events (in order) and returns each
    one's stamp; `gap`: the least time between two writes."""

    gap: float
    inside: str  # what the bench process runs (with --sim-processes 0, the simulators too)

    def sources(self) -> list[dict[str, Any]] | None: ...

    def write(self, batch: Batch) -> list[float]: ...

    def writes_text(self, events: int) -> str: ...

    def rows(self, metrics: Metrics) -> list[tuple[str, str]]: ...


class FileTarget:
    """The file source: one write carries every event of the batch."""

    gap = WRITE_EVERY
    inside = "driver"

    def __init__(self, bench: Bench, spec: dict[str, list[str]]) -> None:
        self._bench = bench
        self._entries = {name: upstream_yaml(name, servers) for name, servers in spec.items()}
        bench.write_upstreams_text(self._entries.values())
        self.writes = 0

    def sources(self) -> list[dict[str, Any]] | None:
        return None  # the bench's file source

    def write(self, batch: Batch) -> list[float]:
        for name, servers in batch:
            self._entries[name] = upstream_yaml(name, servers)
        stamp = self._bench.write_upstreams_text(self._entries.values())
        self.writes += 1
        return [stamp] * len(batch)

    def writes_text(self, events: int) -> str:
        return (
            f"in {self.writes} file writes at least {WRITE_EVERY * 1000:g} ms apart "
            f"({events / max(1, self.writes):.1f} events per write)"
        )

    def rows(self, metrics: Metrics) -> list[tuple[str, str]]:
        return [answer_times_row(metrics)]


class KubeTarget:
    """EndpointSlices on the fake API server: one slice write per event."""

    gap = 0.0
    inside = "fake API server, driver"

    def __init__(self, bench: Bench, opts: Options) -> None:
        self.kube = bench.enter_context(FakeKubeAPI())
        self.services = KubeServices(self.kube, opts.upstreams, opts.servers)
        self.calls: list[float] = []  # how long each change took the fake (in the lag)
        self.writes = 0

    def sources(self) -> list[dict[str, Any]] | None:
        return [self.services.source()]

    def write(self, batch: Batch) -> list[float]:
        stamps = []
        for name, servers in batch:
            stamp = self.services.set(name, servers)
            self.calls.append(time.monotonic() - stamp)
            stamps.append(stamp)
        self.writes += len(batch)
        return stamps

    def writes_text(self, events: int) -> str:
        return f"each one EndpointSlice write ({self.writes} writes)"

    def rows(self, metrics: Metrics) -> list[tuple[str, str]]:
        verbs = Counter(request.verb for request in self.kube.requests)
        requests = ", ".join(f"{n} {verb}" for verb, n in sorted(verbs.items()))
        return [
            calls_row(self.calls),
            (
                "fake API: watch events sent and requests answered, since start",
                f"{sum(self.kube.events_sent.values())}; {requests or 'none'}",
            ),
            *metric_rows(metrics),
        ]


# ----------------------------------------------------------------- the driver


@dataclass
class Driven:
    began: float
    ended: float
    made: int
    late: list[float]  # per event: its due time → its stamp


def drive(
    bench: Bench, target: Target, opts: Options, spec: dict[str, list[str]], versions: Versions
) -> Driven:
    """Make the events, open loop; each upstream's states go to `versions`. Stops at
    DRIVER_SLACK × the duration, done or not."""
    events = round(opts.rate * opts.duration)
    rng = random.Random(SEED)
    names = list(spec)
    late: list[float] = []
    began = checked = free_at = time.monotonic()
    deadline = began + DRIVER_SLACK * opts.duration
    made = 0
    while made < events and (now := time.monotonic()) < deadline:
        # The next event's due time, or later if the target may not write yet.
        if (ahead := max(free_at, began + made / opts.rate) - now) > 0:
            time.sleep(ahead)
            now = time.monotonic()
        due = min(events, max(made + 1, math.floor((now - began) * opts.rate) + 1))
        batch = [_event(rng, spec, names, i) for i in range(made, due)]
        stamps = target.write(batch)
        for i, (name, servers), stamp in zip(range(made, due), batch, stamps, strict=True):
            versions[name].append((stamp, frozenset(servers)))
            late.append(stamp - began - i / opts.rate)
        made, free_at = due, stamps[-1] + target.gap
        if free_at - checked > ALIVE_EVERY:
            bench.check_alive()
            checked = free_at
    return Driven(began, time.monotonic(), made, late)


def _event(
    rng: random.Random, spec: dict[str, list[str]], names: Sequence[str], i: int
) -> tuple[str, tuple[str, ...]]:
    """Event i: one random server of one random upstream becomes `churn_address(i)`;
    returns the upstream and its servers now."""
    name = names[rng.randrange(len(names))]
    servers = spec[name]
    servers[rng.randrange(len(servers))] = churn_address(i)
    return name, tuple(servers)


# ----------------------------------------------------------------- the scenario


def churn(opts: Options) -> Result:
    if not isinstance(opts, ChurnOptions):
        opts = ChurnOptions(**dataclasses.asdict(opts))
    events = round(opts.rate * opts.duration)
    if events > MAX_EVENTS:
        raise BenchError(f"churn: at most {MAX_EVENTS} events (--rate × --duration)")
    spec = base_spec(opts.upstreams, opts.servers)
    with Bench(opts.proxies, opts.processes) as bench:
        target: Target = (
            KubeTarget(bench, opts) if opts.source == "kube" else FileTarget(bench, spec)
        )
        syncer = bench.start_syncer(opts, target.sources())
        synced = cold_sync(bench, syncer, set(spec))
        logs = [PostLog(sim) for sim in bench.sims]
        versions: Versions = {n: [(float("-inf"), frozenset(s))] for n, s in spec.items()}
        cpu0, bench_cpu0 = syncer.cpu_seconds(), bench.cpu_seconds()
        driven = drive(bench, target, opts, spec, versions)
        window = driven.ended - driven.began
        cpu = syncer.cpu_seconds() - cpu0
        cpu_rows = _percent_rows(window, cpu, bench, bench_cpu0, target.inside)
        caught_up = wait_final(bench, logs, final_states(versions), servers_state, SYNC_TIMEOUT)
        cpu_done = syncer.cpu_seconds() - cpu0
        bench.sleep(DRAIN)  # every nginx worker applies what was accepted
        for log in logs:
            log.update()
        lags = lag_figures(versions, logs, servers_state, opts.debounce_s)
        made = driven.made
        rows = [
            ("source", SOURCES[opts.source]),
            ("cold sync before the window", f"{synced:.2f} s"),
            (
                "endpoint events (each replaces one server of one random upstream)",
                f"{made} of {events} made in {window:.1f} s ({made / window:.0f}/s), "
                + target.writes_text(made),
            ),
            lateness_row(driven.late),
            *lag_rows(lags, opts.proxies, opts.debounce_s),
            *catch_up_rows("last write", caught_up, driven.began, driven.ended, cpu_done),
            *cpu_rows,
            *target.rows(bench.metrics()),
            *bench.proxy_rows(syncer),
            ("syncer CPU (since start)", f"{syncer.cpu_seconds():.2f} s"),
            ("syncer warnings and errors logged", syncer.log_summary()),
        ]
    return Result(title(opts), command("churn", opts), setup(opts), rows)


def _percent_rows(
    window: float, syncer_cpu: float, bench: Bench, since: tuple[float, float], inside: str
) -> list[tuple[str, str]]:
    """CPU of the syncer, the bench process and the simulator processes over `window`:
    they share the machine's cores. `inside`: what the bench process runs."""
    own, children = (now - then for now, then in zip(bench.cpu_seconds(), since, strict=True))
    where = inside if bench.sim_processes is not None else f"{inside}, simulators"
    text = f"syncer {100 * syncer_cpu / window:.1f} %; bench process ({where}) "
    text += f"{100 * own / window:.1f} %"
    if bench.sim_processes is not None:
        text += f"; simulator processes ({bench.processes}) {100 * children / window:.1f} %"
    return [
        (f"CPU in the change window, % of one core ({os.cpu_count()} CPUs here)", text),
        (f"syncer CPU (change window, {window:.1f} s)", f"{syncer_cpu:.2f} s"),
        *bench.cpu_rows(since, f"{inside}, simulators", inside, ", change window"),
    ]


# ----------------------------------------------------------------- descriptions


def _source(opts: Options) -> Source:
    return opts.source if isinstance(opts, ChurnOptions) else "kube"


def command(scenario: str, opts: Options) -> str:
    return f"{scenarios.command(scenario, opts)} --source {_source(opts)}"


def title(opts: Options) -> str:
    return f"{scenarios.title('churn', opts)}, {SOURCES[_source(opts)]}"


def setup(opts: Options) -> str:
    if _source(opts) == "file":
        return scenarios.setup(opts)
    return f"{discovery.setup(opts)} {opts.upstreams} Services × {opts.servers} endpoints."
