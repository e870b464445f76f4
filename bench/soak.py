"""`python -m bench.soak --minutes 30`: churn against 10 simulated proxies for a long time.

The issue's soak: changes keep coming through a file source while the proxies are
reloaded in turn and 1 % of the writes they receive are refused (dyups' own failure:
`dyups_trylock on` with a busy lock, a 409 for a POST, a closed connection for a
DELETE). The syncer runs as its own process (bench/harness.py); its RSS, threads
and open file descriptors are read from /proc every few seconds.

What it prints:

* the syncer's RSS, threads, open fds and CPU over time, and a verdict on growth
  after warm-up (the first third of the run is warm-up; the last third is compared
  with the middle third);
* the fate of every (change, proxy) pair, read from the simulators' applied events:
  every change carries a server address that marks it (a marker), so the first POST
  a proxy accepted with that marker is when that change reached it. Markers come
  from a pool of `--addresses` (4,096) reused in turn, as pod IPs are reused from
  the nodes' pod ranges: an upstream meets the same marker again only 4,096 changes
  later, so the marker, the name and the time tell the change apart (`--addresses 0`:
  an address never seen before for every change, which keeps filling the syncer's
  bounded per-address caches for hours). A new name takes the other servers of the
  name it replaces, so the addresses are a bounded set. A change is
  *applied* on a proxy when its body was accepted before the next change of the same
  upstream was made, *superseded* when the next change came first, *lost*
  otherwise (must be 0). A deletion is applied when the proxy accepted a DELETE of
  the name after it was made, or needed none (the proxy no longer held the name:
  its creation never reached it, or a reload took it); it is lost when the name is
  still there at the end;
* lag percentiles of the applied changes, the repair time of every reload, and
  whether every nginx worker of every proxy holds exactly the desired state at the
  end (after the churn stops);
* the syncer's own counters next to the simulators' (POSTs accepted, conflicts).

Nothing is asserted: figures are for reading (and `--json` keeps them).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    APPLIED_LIMIT,
    NGINX_WORKERS,
    Bench,
    BenchError,
    Metrics,
    Options,
    OtherLoad,
    SyncerProcess,
    code_version,
    machine,
    percentiles_ms,
    simulator_settings,
)
from bench.simproc import Sim, SimProcesses, default_processes
from syncer.testing.dyups import AppliedEvent, DyupsSimulator

SYNC_TIMEOUT = 120.0  # the first sync
FINAL_TIMEOUT = 60.0  # after the churn stops, until every worker holds the desired state
SETTLE = 1.0  # after the first sync: trailing verify reads and kicks
MAX_TABLE_ROWS = 40  # the time series is thinned to this many rows (the JSON keeps all)
MARK_PORT = 7777
_MARK = re.compile(rf"10\.(\d+)\.(\d+)\.(\d+):{MARK_PORT}\b")
MARK_BASE = 128  # markers are 10.128.0.0 and up: base servers stay below 10.128
MARK_SLOTS = (256 - MARK_BASE) * 65536  # distinct marker addresses


# ----------------------------------------------------------------- options


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 30.0
    proxies: int = 10
    upstreams: int = 100
    servers: int = 4
    rate: float = 10.0  # changes per second
    rotate: float = 0.1  # share of the changes that delete a name and create a new one
    reload_every: float = 30.0  # seconds between reloads (one proxy at a time, in turn)
    fail_rate: float = 0.01  # writes refused by the simulators (trylock busy)
    sample_every: float = 5.0  # seconds between /proc samples of the syncer
    rss_tolerance: float = 2.0  # MiB: RSS differences below this are noise, not growth
    seed: int = 1
    # Markers reused in turn (0: a new one per change). Bounded, as pod IPs are: the
    # syncer's per-address caches then fill during the warm-up instead of all run long.
    addresses: int = 4096
    sim_processes: int | None = None  # None: one per CPU (at most one per proxy); 0: in the bench
    json_path: Path | None = None
    log_path: Path | None = None  # where to keep the syncer's log (the run's temp dir goes)

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    def command(self) -> str:
        line = f"python -m bench.soak --minutes {self.minutes:g}"
        defaults = SoakOptions()
        for name in ("proxies", "upstreams", "servers", "rate", "rotate", "reload_every"):
            if getattr(self, name) != getattr(defaults, name):
                line += f" --{name.replace('_', '-')} {getattr(self, name):g}"
        if self.fail_rate != defaults.fail_rate:
            line += f" --fail-rate {self.fail_rate:g}"
        if self.seed != defaults.seed:
            line += f" --seed {self.seed}"
        if self.addresses != defaults.addresses:
            line += f" --addresses {self.addresses}"
        if self.sim_processes is not None:
            line += f" --sim-processes {self.sim_processes}"
        return line


def _arguments(argv: Sequence[str] | None) -> SoakOptions:
    d = SoakOptions()
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=d.minutes, help="churn duration (30)")
    p.add_argument("--proxies", type=int, default=d.proxies, help="simulated proxies (10)")
    p.add_argument("--upstreams", type=int, default=d.upstreams, help="desired upstreams (100)")
    p.add_argument("--servers", type=int, default=d.servers, help="servers per upstream (4)")
    p.add_argument("--rate", type=float, default=d.rate, help="changes per second (10)")
    p.add_argument(
        "--rotate", type=float, default=d.rotate, help="share of changes that rotate a name (0.1)"
    )
    p.add_argument(
        "--reload-every", type=float, default=d.reload_every, help="seconds between reloads (30)"
    )
    p.add_argument(
        "--fail-rate", type=float, default=d.fail_rate, help="writes refused by the proxies (0.01)"
    )
    p.add_argument(
        "--sample-every", type=float, default=d.sample_every, help="seconds between samples (5)"
    )
    p.add_argument(
        "--rss-tolerance", type=float, default=d.rss_tolerance, help="MiB counted as noise (2)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="the churn's random seed (1)")
    p.add_argument(
        "--addresses",
        type=int,
        default=d.addresses,
        help="marker addresses reused in turn (4096); 0: a new address for every change",
    )
    p.add_argument(
        "--sim-processes",
        type=int,
        help="child processes for the simulators (default: one per CPU); 0: in the bench process",
    )
    p.add_argument("--json", type=Path, dest="json_path", help="also write every figure here")
    p.add_argument("--log", type=Path, dest="log_path", help="keep the syncer's log here")
    args = p.parse_args(argv)
    checks = [
        (args.minutes > 0, "--minutes must be positive"),
        (1 <= args.proxies <= 50, "--proxies must be between 1 and 50"),
        (10 <= args.upstreams <= 5000, "--upstreams must be between 10 and 5000"),
        (1 <= args.servers <= 50, "--servers must be between 1 and 50"),
        (0.1 <= args.rate <= 200, "--rate must be between 0.1 and 200"),
        (0 <= args.rotate <= 1, "--rotate must be between 0 and 1"),
        (args.reload_every > 0, "--reload-every must be positive"),
        (0 <= args.fail_rate < 0.5, "--fail-rate must be in [0, 0.5)"),
        (args.sample_every >= 0.5, "--sample-every must be at least 0.5"),
        (args.sim_processes is None or args.sim_processes >= 0, "--sim-processes: 0 or more"),
        (
            args.addresses == 0 or 1024 <= args.addresses <= MARK_SLOTS,
            f"--addresses must be 0 or between 1024 and {MARK_SLOTS}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)
    return SoakOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SoakOptions)})


# ----------------------------------------------------------------- the desired state


def marker_slot(index: int, pool: int) -> int:
    """The marker address change `index` takes: its own (pool 0), or one of `pool` in turn."""
    slot = index % pool if pool else index
    if slot >= MARK_SLOTS:
        raise BenchError(f"more than {MARK_SLOTS} changes: give --addresses")
    return slot


def marker(slot: int) -> str:
    """The marker address of `slot` (10.128.0.0 and up)."""
    return f"10.{MARK_BASE + slot // 65536}.{slot // 256 % 256}.{slot % 256}:{MARK_PORT}"


def marker_of(body: str | None) -> int | None:
    """The marker slot a body carries, if any."""
    match = _MARK.search(body or "")
    if match is None or int(match[1]) < MARK_BASE:
        return None
    return (int(match[1]) - MARK_BASE) * 65536 + int(match[2]) * 256 + int(match[3])


def base_servers(slot: int, servers: int) -> list[str]:
    """The servers of the name in `slot` (below 10.128: never taken for a marker)."""
    return [f"10.{slot // 250 % 128}.{slot % 250}.{j + 1}:8080" for j in range(servers)]


@dataclass(frozen=True)
class Change:
    index: int  # in the order made; deletions get an index too
    name: str
    stamp: float  # time.monotonic() just before the file was renamed into place
    delete: bool


@dataclass
class Churn:
    """The desired state and every change made to it."""

    opts: SoakOptions
    rng: random.Random
    spec: dict[str, list[str]] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)  # name → slot of its base servers
    rotating: list[str] = field(default_factory=list)  # oldest first
    changes: list[Change] = field(default_factory=list)
    created: int = 0  # rotating names made so far

    def start(self) -> dict[str, list[str]]:
        rotating = max(1, self.opts.upstreams // 10)
        for k in range(self.opts.upstreams - rotating):
            self._add(f"u{k:05d}", k)
        for k in range(self.opts.upstreams - rotating, self.opts.upstreams):
            self.rotating.append(self._new_rotating(k))
        return self.spec

    def _add(self, name: str, slot: int) -> None:
        self.slots[name] = slot
        self.spec[name] = base_servers(slot, self.opts.servers)

    def _new_rotating(self, slot: int) -> str:
        name = f"r{self.created:06d}"  # never reused: a deleted name stays deleted
        self.created += 1
        self._add(name, slot)
        return name

    def _set(self, name: str, index: int) -> None:
        """Give `name` the body of change `index`: its marker, then its base servers."""
        slot = marker_slot(index, self.opts.addresses)
        self.spec[name] = [marker(slot), *base_servers(self.slots[name], self.opts.servers)[1:]]

    def next_edit(self) -> list[tuple[int, str, bool]]:
        """Change the spec once; returns (index, name, delete) of the changes made."""
        index = len(self.changes)
        if self.rng.random() < self.opts.rotate:
            old = self.rotating.pop(0)
            del self.spec[old]
            # The new name takes the old one's base servers, as pods reuse the addresses
            # freed in their node's range: the addresses stay a bounded set.
            new = self._new_rotating(self.slots.pop(old))
            self.rotating.append(new)
            self._set(new, index + 1)
            # The deletion and the creation go out in one write: two changes.
            return [(index, old, True), (index + 1, new, False)]
        name = self.rng.choice(list(self.spec))
        self._set(name, index)
        return [(index, name, False)]

    def record(self, made: list[tuple[int, str, bool]], stamp: float) -> None:
        for index, name, delete in made:
            self.changes.append(Change(index, name, stamp, delete))


# ----------------------------------------------------------------- /proc samples


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the churn began
    rss_mib: float
    threads: int
    fds: int
    cpu_s: float  # syncer CPU since it started
    changes: int
    names: int  # rotating names created so far (the first ones included)


def read_sample(syncer: SyncerProcess, began: float, churn: Churn) -> Sample:
    status = Path(f"/proc/{syncer.pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return Sample(
        at=time.monotonic() - began,
        rss_mib=int(fields["VmRSS"].split()[0]) / 1024,
        threads=int(fields["Threads"]),
        fds=len(os.listdir(f"/proc/{syncer.pid}/fd")),
        cpu_s=syncer.cpu_seconds(),
        changes=len(churn.changes),
        names=churn.created,
    )


class Sampler:
    """Reads the syncer's /proc entries every `every` seconds in its own thread."""

    def __init__(self, syncer: SyncerProcess, churn: Churn, every: float, began: float) -> None:
        self.samples: list[Sample] = []
        self._syncer, self._churn, self._every, self._began = syncer, churn, every, began
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="soak-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._take()

    def _take(self) -> None:
        # A failed read means the syncer died: the driver notices and stops the run.
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.samples.append(read_sample(self._syncer, self._began, self._churn))

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._take()


# ----------------------------------------------------------------- driving


@dataclass(frozen=True)
class Reload:
    proxy: int
    stamp: float
    names: frozenset[str]  # desired when it happened: what must come back


@dataclass
class Drive:
    reloads: list[Reload] = field(default_factory=list)
    late: list[float] = field(default_factory=list)  # seconds behind schedule, per write
    began: float = 0.0
    ended: float = 0.0


def drive(bench: Bench, churn: Churn, opts: SoakOptions, began: float) -> Drive:
    """Write one change every 1/rate seconds and reload one proxy every reload_every
    seconds, until the duration is over. Checks once a second that the syncer and the
    simulator processes live."""
    out = Drive(began=began)
    tick, next_reload, next_check = 1.0 / opts.rate, began + opts.reload_every, began
    due, end = began, began + opts.seconds
    while (now := time.monotonic()) < end:
        if now >= next_check:
            bench.check_alive()
            next_check = now + 1.0
        if now >= next_reload:
            out.reloads.append(_reload(bench, churn, len(out.reloads)))
            next_reload += opts.reload_every
        if now >= due:
            out.late.append(now - due)
            made = churn.next_edit()
            churn.record(made, bench.write_upstreams(churn.spec))
            due += tick
            continue
        time.sleep(max(0.0, min(due, next_reload, end) - time.monotonic()))
    out.ended = time.monotonic()
    return out


def _reload(bench: Bench, churn: Churn, count: int) -> Reload:
    proxy = count % len(bench.sims)
    names = frozenset(churn.spec)
    stamp = time.monotonic()
    bench.sims[proxy].reload()
    return Reload(proxy, stamp, names)


# ----------------------------------------------------------------- final state


def held(sim: Sim, worker: int) -> dict[str, list[str]]:
    return {name: sorted(s.addr for s in ss) for name, ss in sim.upstreams(worker).items()}


def mismatches(sims: Sequence[Sim], spec: dict[str, list[str]]) -> list[str]:
    """(proxy, worker) pairs whose upstreams differ from the spec, with what differs."""
    want = {name: sorted(servers) for name, servers in spec.items()}
    found = []
    for p, sim in enumerate(sims):
        for w in range(sim.workers):
            have = held(sim, w)
            wrong = sorted(n for n in want.keys() | have.keys() if have.get(n) != want.get(n))
            if wrong:
                found.append(
                    f"p{p} w{w}: {', '.join(wrong[:5])}" + (" …" if len(wrong) > 5 else "")
                )
    return found


def wait_final(bench: Bench, spec: dict[str, list[str]]) -> float | None:
    """Seconds from the end of the churn until every worker holds `spec`, or None."""
    started = time.monotonic()
    while mismatches(bench.sims, spec):
        if time.monotonic() - started > FINAL_TIMEOUT:
            return None
        bench.check_alive()
        time.sleep(0.05)
    return time.monotonic() - started


# ----------------------------------------------------------------- classification


@dataclass
class ProxyEvents:
    """One proxy's applied events, indexed for the classification."""

    accepted: dict[int, float] = field(default_factory=dict)  # change → first application
    everywhere: dict[int, float] = field(default_factory=dict)  # change → on every worker
    deleted: dict[str, float] = field(default_factory=dict)  # name → first DELETE applied
    post_times: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # (name, worker)
    stale: int = 0  # a worker applied an older body of a name after a newer one


class Markers:
    """Which change a body accepted by a proxy carries.

    A marker slot comes back every `pool` changes, so it names a change only together
    with the upstream and the time: the latest change of that upstream with that slot
    made before the body was accepted. The one before it on the same upstream is
    `pool` changes older (minutes at the soak's rates), far beyond any lag."""

    def __init__(self, changes: Sequence[Change], pool: int) -> None:
        self._by_slot: dict[tuple[str, int], list[Change]] = {}
        for change in changes:  # in the order made, so each list is by stamp
            if not change.delete:
                key = (change.name, marker_slot(change.index, pool))
                self._by_slot.setdefault(key, []).append(change)

    def change_of(self, name: str, body: str | None, at: float) -> int | None:
        slot = marker_of(body)
        if slot is None:
            return None
        made = [c for c in self._by_slot.get((name, slot), []) if c.stamp <= at]
        return made[-1].index if made else None


def index_events(events: Sequence[AppliedEvent], workers: int, markers: Markers) -> ProxyEvents:
    out = ProxyEvents()
    per_worker: dict[tuple[int, int], float] = {}
    newest: dict[tuple[str, int], int] = {}  # (name, worker) → newest change applied
    for e in events:
        if e.op == "delete":
            out.deleted.setdefault(e.name, e.at)
            continue
        out.post_times.setdefault((e.name, e.worker), []).append(e.at)
        index = markers.change_of(e.name, e.body, e.at)
        if index is None:
            continue
        out.accepted.setdefault(index, e.at)
        per_worker.setdefault((index, e.worker), e.at)
        if index < newest.get((e.name, e.worker), -1):
            out.stale += 1
        newest[(e.name, e.worker)] = max(index, newest.get((e.name, e.worker), -1))
    for index in {i for i, _ in per_worker}:
        times = [per_worker.get((index, w)) for w in range(workers)]
        if None not in times:
            out.everywhere[index] = max(t for t in times if t is not None)
    return out


@dataclass
class Fates:
    applied: int = 0
    superseded: int = 0
    delete_applied: int = 0
    delete_not_needed: int = 0
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)
    accept_lag: list[float] = field(default_factory=list)  # per applied (change, proxy)
    plane_lag: list[float] = field(default_factory=list)  # until every worker had it
    last_proxy_lag: list[float] = field(default_factory=list)  # per change applied everywhere
    stale: int = 0

    @property
    def seen(self) -> int:
        return (
            self.applied
            + self.superseded
            + self.delete_applied
            + self.delete_not_needed
            + self.lost
        )


def next_changes(changes: Sequence[Change]) -> dict[int, Change | None]:
    """Each change → the next change of the same upstream (None for the last)."""
    following: dict[int, Change | None] = {}
    last: dict[str, Change] = {}
    for change in changes:
        if change.name in last:
            following[last[change.name].index] = change
        following[change.index] = None
        last[change.name] = change
    return following


def classify(
    changes: Sequence[Change], proxies: Sequence[ProxyEvents], final: Sequence[set[str]]
) -> Fates:
    """`final[p]`: the names proxy p holds on some worker at the end."""
    out = Fates(stale=sum(p.stale for p in proxies))
    following = next_changes(changes)
    for change in changes:
        accepted_on: list[float] = []
        for p, events in enumerate(proxies):
            if change.delete:
                _classify_delete(change, events, final[p], p, out)
                continue
            at = _classify_set(change, following[change.index], events, p, out)
            if at is not None:
                accepted_on.append(at)
        if len(accepted_on) == len(proxies):
            out.last_proxy_lag.append(max(accepted_on) - change.stamp)
    return out


def _classify_set(
    change: Change, after: Change | None, events: ProxyEvents, proxy: int, out: Fates
) -> float | None:
    at = events.accepted.get(change.index)
    if at is not None and at >= change.stamp and (after is None or at < after.stamp):
        out.applied += 1
        out.accept_lag.append(at - change.stamp)
        if (everywhere := events.everywhere.get(change.index)) is not None:
            out.plane_lag.append(everywhere - change.stamp)
        return at
    if after is not None:
        out.superseded += 1
    else:
        out.lost += 1
        out.lost_examples.append(f"p{proxy} {change.name} (change {change.index})")
    return None


def _classify_delete(
    change: Change, events: ProxyEvents, final: set[str], proxy: int, out: Fates
) -> None:
    if change.name in final:
        out.lost += 1
        out.lost_examples.append(
            f"p{proxy} {change.name} still held (deleted at change {change.index})"
        )
    elif events.deleted.get(change.name, -1.0) >= change.stamp:
        out.delete_applied += 1
    else:
        out.delete_not_needed += 1


def reload_repairs(
    reloads: Sequence[Reload],
    proxies: Sequence[ProxyEvents],
    changes: Sequence[Change],
    workers: int,
) -> tuple[list[float], int]:
    """Per reload: seconds until every name desired at the reload was posted again to
    every worker of that proxy (a name deleted before it came back needs nothing);
    and the (name, worker) pairs that never came back."""
    deleted_at = {c.name: c.stamp for c in changes if c.delete}
    times, unrepaired = [], 0
    for reload in reloads:
        events = proxies[reload.proxy]
        latest: float | None = 0.0
        for name in reload.names:
            gone = deleted_at.get(name)
            for w in range(workers):
                posts = events.post_times.get((name, w), [])
                back = next((t for t in posts if t >= reload.stamp), None)
                if gone is not None and (back is None or back > gone):
                    continue
                if back is None:
                    unrepaired += 1
                    latest = None
                elif latest is not None:
                    latest = max(latest, back - reload.stamp)
        if latest is not None:
            times.append(latest)
    return times, unrepaired


# ----------------------------------------------------------------- growth verdict


def thirds(samples: Sequence[Sample], seconds: float) -> tuple[list[Sample], list[Sample]]:
    """The middle and last thirds of the churn window (the first is warm-up)."""
    middle = [s for s in samples if seconds / 3 <= s.at < 2 * seconds / 3]
    last = [s for s in samples if s.at >= 2 * seconds / 3]
    return middle, last


def slope_per_hour(samples: Sequence[Sample]) -> float | None:
    """Least-squares RSS slope in MiB per hour."""
    if len(samples) < 3:
        return None
    xs, ys = [s.at for s in samples], [s.rss_mib for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def growth_verdict(samples: Sequence[Sample], opts: SoakOptions) -> list[tuple[str, str]]:
    middle, last = thirds(samples, opts.seconds)
    if len(middle) < 2 or len(last) < 2:
        return [("growth after warm-up", "not judged: too few samples (run longer)")]
    rss_mid = statistics.median(s.rss_mib for s in middle)
    rss_last = statistics.median(s.rss_mib for s in last)
    rss_delta = rss_last - rss_mid
    slope = slope_per_hour([*middle, *last])
    rotated = statistics.median(s.names for s in last) - statistics.median(s.names for s in middle)
    changed = statistics.median(s.changes for s in last) - statistics.median(
        s.changes for s in middle
    )
    rows = [
        (
            "RSS median, middle third → last third",
            f"{rss_mid:.1f} → {rss_last:.1f} MiB ({rss_delta:+.2f} MiB); least-squares slope "
            "over both thirds, extrapolated to an hour: "
            + ("—" if slope is None else f"{slope:+.2f} MiB/h"),
        ),
        (
            # Each change brings a marker address (never seen before with --addresses 0),
            # each rotation a new name: growth per change points at per-address state, per
            # name at per-name.
            "RSS change, middle third → last third, per 1,000 changes; per 1,000 names rotated",
            (f"{1000 * rss_delta / changed:+.2f} MiB ({changed:.0f} changes)" if changed else "—")
            + "; "
            + (f"{1000 * rss_delta / rotated:+.2f} MiB ({rotated:.0f} names)" if rotated else "—"),
        ),
        ("threads, middle third → last third (min–max)", _span(middle, last, "threads")),
        ("open fds, middle third → last third (min–max)", _span(middle, last, "fds")),
    ]
    grew = []
    if rss_delta > opts.rss_tolerance:
        grew.append(f"RSS +{rss_delta:.1f} MiB")
    for what in ("threads", "fds"):
        # A level that the last third never left below the middle third's maximum.
        if min(getattr(s, what) for s in last) > max(getattr(s, what) for s in middle):
            grew.append(what)
    verdict = (
        "GROWTH: " + ", ".join(grew)
        if grew
        else f"no growth after warm-up (RSS within {opts.rss_tolerance:g} MiB; "
        "threads and fds never settled above the middle third's maximum)"
    )
    return [*rows, ("verdict", verdict)]


def _span(middle: Sequence[Sample], last: Sequence[Sample], what: str) -> str:
    def mm(xs: Sequence[Sample]) -> str:
        values = [getattr(s, what) for s in xs]
        return f"{min(values)}–{max(values)}"

    return f"{mm(middle)} → {mm(last)}"


def series_table(samples: Sequence[Sample]) -> str:
    """Markdown rows of the time series, thinned to MAX_TABLE_ROWS (the last kept)."""
    step = max(1, -(-len(samples) // MAX_TABLE_ROWS))
    picked = list(samples[::step])
    if picked and picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    lines = [
        "| t (s) | RSS (MiB) | threads | open fds | CPU since last row (% of one core) | changes made |",
        "|---|---|---|---|---|---|",
    ]
    previous: Sample | None = None
    for s in picked:
        cpu = "—"
        if previous is not None and s.at > previous.at:
            cpu = f"{100 * (s.cpu_s - previous.cpu_s) / (s.at - previous.at):.1f}"
        lines.append(
            f"| {s.at:.0f} | {s.rss_mib:.1f} | {s.threads} | {s.fds} | {cpu} | {s.changes} |"
        )
        previous = s
    return "\n".join(lines)


# ----------------------------------------------------------------- the syncer's counters


def counter_rows(metrics: Metrics, sims: Sequence[Sim]) -> list[tuple[str, str]]:
    stats = [s.stats for s in sims]
    accepted = sum(s.requests[("POST", 200)] for s in stats)
    applied = metrics.total("dyups_syncer_requests_total", method="POST", outcome="applied")
    deletes_ok = sum(s.requests[("DELETE", 200)] for s in stats)
    deletes = metrics.total("dyups_syncer_requests_total", method="DELETE", outcome="applied")
    drift = {
        reason: metrics.total("dyups_syncer_drift_repairs_total", reason=reason)
        for reason in ("lost", "missing", "changed")
    }
    return [
        (
            "POSTs answered 200 by the proxies / counted applied by the syncer",
            f"{accepted} / {applied:.0f}",
        ),
        (
            "DELETEs answered 200 by the proxies / counted applied by the syncer",
            f"{deletes_ok} / {deletes:.0f}",
        ),
        (
            "writes refused by the proxies (409, closed DELETE) / conflicts counted by the syncer",
            f"{sum(s.conflicts for s in stats)} / "
            f"{metrics.total('dyups_syncer_conflicts_total'):.0f}",
        ),
        (
            "planned writes skipped as superseded (dyups_syncer_changes_superseded_total)",
            f"{metrics.total('dyups_syncer_changes_superseded_total'):.0f}",
        ),
        (
            "drift repairs counted by the syncer: lost / missing / changed",
            " / ".join(f"{v:.0f}" for v in drift.values()),
        ),
        ("queue overflows (`alert` 500s), all proxies", str(sum(s.alerts for s in stats))),
        ("bodies rejected (`add server failed`), all proxies", str(sum(s.rejected for s in stats))),
    ]


# ----------------------------------------------------------------- the run


@dataclass
class Outcome:
    rows: list[tuple[str, str]]
    samples: list[Sample]
    raw: dict[str, Any]


def start_simulators(bench: Bench, opts: SoakOptions) -> str:
    """The proxies, with trylock on and `fail_rate` of the writes refused, in child
    processes (as real proxies are separate processes) unless --sim-processes 0.
    Returns where they run."""
    settings = [
        {
            **simulator_settings(opts.seed * 1000 + i),
            "trylock": opts.fail_rate > 0,
            "conflict_rate": opts.fail_rate,
        }
        for i in range(opts.proxies)
    ]
    processes = (
        default_processes(opts.proxies) if opts.sim_processes is None else opts.sim_processes
    )
    processes = min(processes, opts.proxies)
    if processes == 0:
        for kwargs in settings:
            bench.sims.append(bench.enter_context(DyupsSimulator(**kwargs)))
        return "the simulators run in the bench process"
    children = bench.enter_context(contextlib.closing(SimProcesses(settings, processes)))
    bench.sim_processes = children  # so that bench.check_alive() watches them too
    bench.sims.extend(children.sims)
    return f"the simulators run in {processes} child process{'es' if processes > 1 else ''}"


def run(opts: SoakOptions) -> Outcome:
    churn = Churn(opts, random.Random(opts.seed))
    spec = churn.start()
    with Bench(0) as bench:
        where = start_simulators(bench, opts)
        bench.write_upstreams(spec)
        syncer = bench.start_syncer(Options(opts.proxies, 0, 0, 0, 0.0, kick=True, debounce=None))
        bench.wait_synced(set(spec), SYNC_TIMEOUT)
        bench.sleep(SETTLE)
        for sim in bench.sims:
            sim.clear_applied()  # keep only the churn's events
        began = time.monotonic()
        with Sampler(syncer, churn, opts.sample_every, began) as sampler:
            driven = drive(bench, churn, opts, began)
            final_s = wait_final(bench, churn.spec)
        outcome = _figures(bench, syncer, churn, driven, sampler.samples, final_s, opts)
        outcome.rows.insert(0, ("where the simulators run", where))
        if opts.log_path is not None:
            shutil.copyfile(syncer.log_path, opts.log_path)
        return outcome


def _figures(
    bench: Bench,
    syncer: SyncerProcess,
    churn: Churn,
    driven: Drive,
    samples: list[Sample],
    final_s: float | None,
    opts: SoakOptions,
) -> Outcome:
    wrong = mismatches(bench.sims, churn.spec)
    applied = [sim.applied for sim in bench.sims]
    if any(len(events) >= APPLIED_LIMIT for events in applied):
        raise BenchError("a simulator dropped applied events; run fewer changes")
    markers = Markers(churn.changes, opts.addresses)
    events = [
        index_events(e, sim.workers, markers) for e, sim in zip(applied, bench.sims, strict=True)
    ]
    final = [{name for w in range(sim.workers) for name in held(sim, w)} for sim in bench.sims]
    fates = classify(churn.changes, events, final)
    repairs, unrepaired = reload_repairs(driven.reloads, events, churn.changes, NGINX_WORKERS)
    window = driven.ended - driven.began
    sets = sum(not c.delete for c in churn.changes)
    deletes = len(churn.changes) - sets
    rows = [
        (
            "churn window",
            f"{window:.0f} s ({len(churn.changes)} changes: {sets} sets, {deletes} deletions)",
        ),
        ("reloads (one proxy at a time, in turn)", str(len(driven.reloads))),
        *_reconciliation_rows(fates, len(churn.changes), opts.proxies),
        (
            "lag, each applied (change, proxy): p50 / p90 / p99 / max (ms)",
            percentiles_ms(fates.accept_lag),
        ),
        (
            "lag until the last proxy accepted (changes applied everywhere): p50 / p90 / p99 / max (ms)",
            percentiles_ms(fates.last_proxy_lag),
        ),
        (
            "data-plane lag, until every nginx worker of the proxy applied it: p50 / p90 / p99 / max (ms)",
            percentiles_ms(fates.plane_lag),
        ),
        (
            "reload → every name back on every worker: p50 / p90 / p99 / max (ms)",
            percentiles_ms(repairs)
            + (f"; {unrepaired} (name, worker) never back" if unrepaired else ""),
        ),
        ("stale applications (a worker applied an older body after a newer one)", str(fates.stale)),
        (
            "end of churn → every worker of every proxy holds exactly the desired state",
            "not within " + f"{FINAL_TIMEOUT:g} s: " + "; ".join(wrong[:5])
            if final_s is None
            else f"{final_s:.2f} s",
        ),
        ("driver behind its schedule: p50 / p90 / p99 / max (ms)", percentiles_ms(driven.late)),
        *counter_rows(bench.metrics(), bench.sims),
        *growth_verdict(samples, opts),
        ("syncer peak RSS (VmHWM)", f"{syncer.peak_rss_mib():.1f} MiB"),
        ("syncer CPU (since start)", f"{syncer.cpu_seconds():.1f} s"),
        ("syncer warnings and errors logged", syncer.log_summary()),
    ]
    raw = {
        "lost": fates.lost,
        "lost_examples": fates.lost_examples[:50],
        "applied": fates.applied,
        "superseded": fates.superseded,
        "delete_applied": fates.delete_applied,
        "delete_not_needed": fates.delete_not_needed,
        "seen": fates.seen,
        "stale": fates.stale,
        "final_s": final_s,
        "final_mismatches": wrong,
        "reload_repairs_s": repairs,
        "accept_lag_s": _quantiles(fates.accept_lag),
        "last_proxy_lag_s": _quantiles(fates.last_proxy_lag),
    }
    return Outcome(rows, samples, raw)


def _reconciliation_rows(fates: Fates, changes: int, proxies: int) -> list[tuple[str, str]]:
    pairs = changes * proxies
    balance = (
        "reconciles" if fates.seen == pairs else f"DOES NOT reconcile ({fates.seen} ≠ {pairs})"
    )
    return [
        (
            "(change, proxy) pairs seen = applied + superseded + deletions applied + "
            "deletions not needed + lost",
            f"{pairs} = {fates.applied} + {fates.superseded} + {fates.delete_applied} + "
            f"{fates.delete_not_needed} + {fates.lost} ({balance})",
        ),
        (
            "lost (must be 0)",
            str(fates.lost) + (f": {'; '.join(fates.lost_examples[:5])}" if fates.lost else ""),
        ),
    ]


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


# ----------------------------------------------------------------- report


def setup_text(opts: SoakOptions) -> str:
    addresses = (
        f"marker addresses from a pool of {opts.addresses:,} reused in turn"
        if opts.addresses
        else "a marker address never seen before in every change"
    )
    return (
        f"{opts.proxies} simulated proxies ({NGINX_WORKERS} nginx workers, classic, "
        f"`dyups_trylock on` with {opts.fail_rate:.1%} of writes refused), "
        f"{opts.upstreams} upstreams × {opts.servers} servers ({max(1, opts.upstreams // 10)} of "
        f"them rotating: deleted and replaced by a new name), {opts.rate:g} changes/s "
        f"({opts.rotate:.0%} rotations), a reload every {opts.reload_every:g} s (proxies in "
        f"turn); {addresses}; file source polled every 5 ms; every other syncer setting at its default "
        f"(debounce 100 ms, probe 1 s, resync 10 s, kick on)."
    )


def report(opts: SoakOptions, outcome: Outcome, started: str, code: str) -> str:
    lines = [
        f"### soak, {opts.minutes:g} min (run of {started})",
        "",
        f"`{opts.command()}`",
        "",
        setup_text(opts),
        "",
        "Machine: " + "; ".join(machine()) + f"; code measured: {code}",
        "",
        "| figure | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in outcome.rows],
        "",
        "The syncer over time (first third: warm-up):",
        "",
        series_table(outcome.samples),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    opts = _arguments(argv)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    code = code_version()
    print(f"running: {opts.command()}", file=sys.stderr, flush=True)
    try:
        with OtherLoad() as other:
            outcome = run(opts)
    except BenchError as e:
        print(f"bench.soak: {e}", file=sys.stderr)
        return 1
    outcome.rows.append(
        (
            "other processes' CPU during the run, mean / max of 2 s samples (% of one core)",
            other.summary(),
        )
    )
    print(report(opts, outcome, started, code), flush=True)
    if opts.json_path is not None:
        data = {
            "command": opts.command(),
            "started": started,
            "code": code,
            "rows": outcome.rows,
            "samples": [dataclasses.asdict(s) for s in outcome.samples],
            **outcome.raw,
        }
        opts.json_path.write_text(json.dumps(data, indent=1, default=str))
    return 0 if outcome.raw["lost"] == 0 and not outcome.raw["final_mismatches"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
