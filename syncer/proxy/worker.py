"""One worker per proxy: keeps one dyups interface holding the desired state.

Wakes on a new desired version (debounced), on the probe timer (a cheap
`GET /list` on a fresh connection: an owned upstream missing means the nginx
reloaded, restarted or lost a worker, so it is re-posted at once), and on the
resync timer (a full read that repairs any drift; spread, so that proxies are not
all read at once). Between those reads it plans against its cache of what the
proxy holds, updated by each accepted write, so a single change costs a single POST. Retryable outcomes are retried with tenacity,
interrupted by newer desired state; writes are paced by bytes; after a batch a
few GETs on connections spread over nginx's workers (the kick, `DyupsClient.kick`)
make every nginx worker apply it now.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenacity

from syncer.metrics import Metrics
from syncer.model import DEFAULT_TRAFFIC, ObservedUpstream, Upstream
from syncer.plan import (
    Delete,
    Mode,
    Ownership,
    Plan,
    PlanPolicy,
    Upsert,
    observed_after_post,
    plan,
)
from syncer.proxy.dump import DumpFile
from syncer.proxy.dyups import (
    FIX_TRUNCATION,
    DyupsClient,
    Flavour,
    Outcome,
    ProxyError,
    ProxyUnavailable,
    WriteResult,
)
from syncer.proxy.pacing import DEFAULT_BUDGET, Budget, FairSlots, TokenBucket, message_cost
from syncer.state import DesiredState, Store
from syncer.traffic import Decision, DecisionMemo, ProxyTraits, next_change

FAILING_BACKOFF_MAX = 60.0  # seconds between rounds for an upstream that keeps failing
# Under a stream of writes, propagation kicks start at most this often (see _kick_loop):
# the data plane then follows within this (plus a kick), well inside the module's own
# 1 s timer.
KICK_STREAM_INTERVAL = 0.2
RESYNC_JITTER = 0.2  # a resync comes 0-20 % before `resync_interval` is up
# The kick's connections are kept alive between kicks only this long (seconds).
KICK_KEEP_CONNECTIONS = 2.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    debounce: float = 0.1
    probe_interval: float = 1.0
    resync_interval: float = 10.0
    mode: Mode = Mode.SYNC
    max_delete_fraction: float = 0.5
    owned_prefix: str = ""
    adopt: frozenset[str] = frozenset()
    budget: Budget = DEFAULT_BUDGET
    read_msg_timeout: float = 1.0
    kick_gets: int = 16
    retry_attempts: int = 5
    retry_initial: float = 0.05
    retry_max: float = 2.0
    down_backoff_max: float = 10.0
    dump_path: Path | None = None
    max_body_size: int = 1024 * 1024
    zone: str = ""  # the proxy's zone, for zone-aware upstreams


class _StopWhen(tenacity.stop.stop_base):
    """A tenacity stop condition from a predicate on the retry state."""

    def __init__(self, predicate: Callable[[tenacity.RetryCallState], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._predicate(retry_state)


class ProxyWorker:
    def __init__(
        self,
        *,
        label: str,
        client: DyupsClient,
        store: Store,
        settings: WorkerSettings,
        metrics: Metrics,
        log: Any,
        stop: threading.Event,
        persist_now: Callable[[], bool] = lambda: True,
        may_write: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        kick_slots: FairSlots | None = None,
    ) -> None:
        self.label = label
        self.client = client
        self.store = store
        self.s = settings
        self.m = metrics
        self.log = log.bind(proxy=label)
        self.stop = stop
        self._persist_now = persist_now
        # Leader election: a follower neither reads nor writes, and a leader that
        # loses the lease stops before its next write.
        self._may_write = may_write
        self.following = False
        self._clock = clock
        self._wall = wall
        self._bucket = TokenBucket(settings.budget, clock=clock)
        self._rng = random.Random()
        self._cache: dict[str, ObservedUpstream] | None = None
        self._planned_version = -1
        self._dirty = True  # something failed or drifted: plan again
        self._next_probe = 0.0
        self._next_resync = 0.0
        self._retry_at: float | None = None
        self._down_backoff = 0.0
        self._rejected: set[tuple[str, str]] = set()
        # Per upstream: consecutive failed rounds and when to try again, so that an
        # upstream that keeps failing (e.g. truncated every time) is not re-posted
        # every probe interval, each POST resetting its balancer state.
        self._failing: dict[str, tuple[int, float]] = {}
        self._degraded_deletes: set[str] = set()
        # DELETEs whose connection closed without an answer, not yet counted (how many
        # in a row, by name): a busy trylock (a conflict) or a reload closing the
        # connections, told apart by the next answer (see _classify_closed_delete).
        self._closed_deletes: dict[str, int] = {}
        self._lag_recorded: dict[str, float] = {}
        self._last_conflicts: tuple[str, ...] = ()
        self._last_refused: tuple[str, ...] = ()
        self.up: bool | None = None
        self.reconciled_once = threading.Event()
        self.last_error = ""
        self.last_plan: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._dump = DumpFile(settings.dump_path) if settings.dump_path else None
        self._dumped: dict[str, Upstream] | None = None
        self._kick = threading.Event()
        self._kick_during_last = False  # a round was written while the last kick ran
        self._kick_now = threading.Event()  # the worker caught up: no spacing for this kick
        self._kick_slots = kick_slots or FairSlots(1)
        self._kicker: threading.Thread | None = None
        # Traffic policies: what this proxy should get of each upstream. The plan is
        # made on `_view`; `_planned_from` is the store's state it was derived from.
        self._traffic = DecisionMemo(ProxyTraits(settings.zone))
        self._decisions: dict[str, Decision] = {}
        self._view: Mapping[str, Upstream] = {}
        self._planned_from: Mapping[str, Upstream] = {}
        self._policy_at: float | None = None  # monotonic: a policy's output changes then
        self._retrying = self._build_retrying()

    # ----------------------------------------------------------------- thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"proxy-{self.label}", daemon=True)
        self._thread.start()
        if self.s.kick_gets:
            self._kicker = threading.Thread(
                target=self._kick_loop, name=f"kick-{self.label}", daemon=True
            )
            self._kicker.start()

    def _kick_loop(self) -> None:
        """The propagation kick, off the write path: a change arriving while the GETs
        run is written at once, and a burst of batches costs one kick per round.

        Kicks take a slot shared by the syncer's workers: with hundreds of proxies,
        back-to-back kicks (each `kick_gets` new connections) crowded out the writes.
        Rounds written while waiting for a slot are covered by the one kick that
        follows; a proxy not kicked in time still applies on its own timer.

        Under a stream of writes (a round was written while the last kick ran), kicks
        start at most every KICK_STREAM_INTERVAL: with a fast proxy, rounds can follow
        each other within milliseconds, and back-to-back kicks would open new
        connections by the thousand a second. A change after a quiet spell is still
        kicked at once, and so is the last round of a stream (the worker has caught up
        with the desired state: `_kick_now`)."""
        last_start = -math.inf
        while not self.stop.is_set():
            if not self._kick.wait(KICK_KEEP_CONNECTIONS):
                # No write for a while: the connections the kick keeps alive would only
                # hold descriptors on both sides until the next stream of writes.
                self.client.drop_kick_connections()
                self._kick.wait()
            if self._kick_during_last:
                while (wait := last_start + KICK_STREAM_INTERVAL - self._clock()) > 0:
                    if self.stop.is_set():
                        return
                    if self._kick_now.wait(min(wait, 0.05)):
                        break
            while not self._kick_slots.acquire(timeout=0.5):
                if self.stop.is_set():
                    return
            try:
                self._kick.clear()
                self._kick_now.clear()
                last_start = self._clock()
                if not self.stop.is_set():
                    self.client.kick(self.s.kick_gets)
            finally:
                self._kick_slots.release()
            self._kick_during_last = self._kick.is_set()

    def join(self, timeout: float) -> None:
        if self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                self.step()
                failures = 0
            except Exception as e:  # a bug must not kill the worker for good
                failures += 1
                self.last_error = f"{e.__class__.__name__}: {e}"
                self.log.exception("worker_crashed", failures=failures)
                self._cache = None
                self.stop.wait(min(30.0, 0.5 * 2**failures))
        self._kick.set()  # let the kicker see the stop
        if self._kicker is not None:
            self._kicker.join(timeout=5)
        self.client.close()

    # ------------------------------------------------------------------- loop
    def step(self) -> None:
        """One round: read what is due, reconcile if needed, then wait for the next event."""
        if not self._may_write():
            if not self.following:
                self.log.info("following", hint="another replica holds the lease")
                # A follower knows nothing current of the proxy: drop its series
                # rather than export stale ones (proxy_up, breaker_open, ...).
                self.m.forget_proxy(self.label)
            self.following, self._cache = True, None  # re-read everything once leading
            self._next_probe = self._clock() + self.s.probe_interval
            self._wait(self.store.current().version)
            return
        if self.following:
            self.log.info("leading")
            self.following = False
        now = self._clock()
        try:
            if self._cache is None or now >= self._next_resync:
                self._resync()
            elif now >= self._next_probe:
                self._probe()
        except ProxyError as e:
            self._went_down(e)
            return
        desired = self.store.current()
        retry_due = self._retry_at is not None and now >= self._retry_at
        policy_due = self._policy_at is not None and now >= self._policy_at
        due = retry_due or policy_due
        if desired.ready and (desired.version != self._planned_version or self._dirty or due):
            self.reconcile(desired)
        self._wait(desired.version)

    def _wait(self, version: int) -> None:
        deadlines = [self._next_probe] if self.following else [self._next_probe, self._next_resync]
        if self._retry_at is not None:
            deadlines.append(self._retry_at)
        if self._policy_at is not None and not self.following:
            deadlines.append(self._policy_at)
        timeout = max(0.0, min(deadlines) - self._clock())
        newer = self.store.wait_newer(version, timeout, self.stop)
        if newer.version != version and self.s.debounce > 0:
            # Coalesce a burst of changes into one plan, counted from the burst's first
            # change (not a trailing reset: a continuous stream is still applied every
            # `debounce`). Changes that arrived while this worker was writing have
            # already waited that long: they are planned at once.
            first = self.store.first_published_after(version)
            if first is not None:
                self.stop.wait(max(0.0, first + self.s.debounce - time.monotonic()))

    def _went_down(self, error: ProxyError) -> None:
        self.last_error = str(error)
        self._cache = None
        if self.up is not False:
            self.log.warning("proxy_down", error=str(error))
        self.up = False
        self.m.proxy_up.labels(self.label).set(0)
        self._down_backoff = min(self.s.down_backoff_max, max(0.2, self._down_backoff * 2))
        self.stop.wait(self._down_backoff)

    def _came_up(self) -> None:
        if self.up is False:
            self.log.info("proxy_up", flavour=self.client.flavour)
        self.up = True
        self._down_backoff = 0.0
        self.m.proxy_up.labels(self.label).set(1)

    # ------------------------------------------------------------------ reads
    def _resync(self) -> None:
        """Full read; any difference from what we believed is drift, repaired by the plan."""
        started = self._clock()
        observed = self.client.observe(known=self._cache)
        self._observe_request("GET", "ok", self._clock() - started)
        previous, first = self._cache, self._cache is None and self.up is not None
        self._came_up()
        if previous is not None:
            self._count_drift(previous, observed)
        elif first:
            self.log.info("proxy_full_reconcile", upstreams=len(observed))
        self._cache = dict(observed)
        now = self._clock()
        # Spread over the last fifth of the interval: workers started together would
        # otherwise read and parse every proxy's /detail in the same instant, each
        # time, and delay every proxy's next round (kube-rollout: a burst every 10 s).
        self._next_resync = now + self.s.resync_interval * (1 - RESYNC_JITTER * self._rng.random())
        self._next_probe = now + self.s.probe_interval
        self._dirty = True

    def _count_drift(
        self, believed: dict[str, ObservedUpstream], observed: dict[str, ObservedUpstream]
    ) -> None:
        desired = self.store.current().upstreams
        for name in desired:
            was, now = believed.get(name), observed.get(name)
            # Host-name servers are reported resolved: their form always differs.
            if was is None or was == now or desired[name].has_hostnames:
                continue
            reason = "missing" if now is None else "changed"
            self.m.drift_repairs.labels(self.label, reason).inc()
            self.log.warning("drift_found", upstream=name, reason=reason, by="resync")

    def _probe(self) -> None:
        """Cheap check on a fresh connection (so it reaches any nginx worker)."""
        started = self._clock()
        names = self.client.list_names(fresh=True)
        self._observe_request("GET", "ok", self._clock() - started)
        self._came_up()
        self._next_probe = self._clock() + self.s.probe_interval
        assert self._cache is not None
        desired = self.store.current().upstreams
        missing = [n for n in desired if n in self._cache and n not in names]
        # Names no longer desired that the proxy dropped too (a reload during churn):
        # left in the cache, the plan would count them as deletes still to make and
        # the mass-delete breaker could trip on a proxy that holds nothing to delete.
        vanished = [n for n in self._cache if n not in desired and n not in names]
        for name in vanished:
            del self._cache[name]
        if not missing:
            return
        # Workers can disagree after a crash: re-post even if another read shows them.
        self.log.warning("upstreams_lost", missing=sorted(missing), count=len(missing))
        self.store.forget_applied(self.label)
        for name in missing:
            del self._cache[name]
            self.m.drift_repairs.labels(self.label, "lost").inc()
        self._dirty = True

    # -------------------------------------------------------------- reconcile
    def reconcile(self, desired: DesiredState) -> Plan:
        assert self._cache is not None
        record = self.store.proxy_record(self.label)
        ownership = Ownership(frozenset(record.owned), self.s.owned_prefix, self.s.adopt)
        policy = PlanPolicy(
            mode=self.s.mode,
            max_delete_fraction=self.s.max_delete_fraction,
            deletes_allowed=not desired.restoring,
            override_breaker=desired.override_breaker,
        )
        view = self._proxy_view(desired)
        result = plan(view, self._cache, ownership, policy, applied=record.applied)
        self._planned_version = desired.version
        self._dirty = False
        self._retry_at = None
        self._report_plan(result)
        if set(result.conflicts) != record.foreign:
            self.store.record_foreign(self.label, result.conflicts)
        if result.releases:
            self.store.release(self.label, result.releases)
        if result.claims:
            self.store.claim(self.label, result.claims)
            if not self._persist_now():
                self.log.error("ownership_not_persisted", upstreams=list(result.claims))
        now = self._clock()
        upserts = [
            u
            for u in result.upserts
            if (u.name, u.upstream.digest) not in self._rejected and self._due(u.name, now)
        ]
        # Oldest changes first: under a stream of changes, the ones waiting longest go out
        # before the newest (the plan itself is in name order).
        upserts.sort(key=lambda u: desired.changed_at.get(u.name, 0.0))
        deletes = [d for d in result.deletes if self._due(d.name, now)]
        deferred = len(result.upserts) + len(result.deletes) - len(upserts) - len(deletes)
        failed = self._apply(desired, upserts, deletes)
        if failed or deferred:
            self._dirty = True
            waits = [t for _, t in self._failing.values()] + [self._clock() + self.s.retry_max]
            self._retry_at = min(waits)
            failed += deferred
        elif not result.refused and not result.conflicts:
            self.m.last_sync.labels(self.label).set(self._wall())
        if not failed:
            self.reconciled_once.set()
            if (upserts or deletes) and self.store.current().version == desired.version:
                # Caught up after writing: the last kick of a stream goes at once. (Not
                # after a round with nothing to write: left set, it would let the next
                # kick of a stream skip its spacing.)
                self._kick_now.set()
        self._write_dump()
        return result

    def _proxy_view(self, desired: DesiredState) -> Mapping[str, Upstream]:
        """The desired upstreams as this proxy should get them (traffic policies)."""
        wall = self._wall()
        with_policy = {
            name: u
            for name, u in desired.upstreams.items()
            if u.has_draining or u.traffic != DEFAULT_TRAFFIC
        }
        self._decisions = self._traffic.decide_all(
            with_policy, wall, desired.history, held_empty=desired.held_empty
        )
        due = next_change(self._decisions.values())
        self._policy_at = None if due is None else self._clock() + max(0.0, due - wall)
        self._planned_from = desired.upstreams
        if not with_policy:
            self._view = desired.upstreams
        else:
            view = dict(desired.upstreams)
            view.update((name, d.upstream) for name, d in self._decisions.items())
            self._view = view
        return self._view

    def _write_dump(self) -> None:
        """The upstreams as this proxy last accepted them. Only accepted bodies: one the
        module refused could stop nginx from starting. Kept across a reload of the
        proxy (which is exactly when the file is needed)."""
        if self._dump is None:
            return
        if self._dumped is None:  # first round: what the snapshot says was applied
            record = self.store.proxy_record(self.label)
            self._dumped = {
                name: u
                for name, u in self._view.items()
                if name in record.owned and record.applied.get(name) == u.digest
            }
        try:
            if self._dump.update(self._dumped.values()):
                self.log.info(
                    "dump_written", path=str(self._dump.path), upstreams=len(self._dumped)
                )
        except OSError as e:
            self.log.error("dump_write_failed", path=str(self._dump.path), error=str(e))

    def _due(self, name: str, now: float) -> bool:
        failing = self._failing.get(name)
        return failing is None or failing[1] <= now

    def _failed_round(self, name: str) -> None:
        count = self._failing.get(name, (0, 0.0))[0] + 1
        delay = min(FAILING_BACKOFF_MAX, self.s.retry_max * 2 ** (count - 1))
        self._failing[name] = (count, self._clock() + delay)

    def _report_plan(self, result: Plan) -> None:
        self.last_plan = {
            "upserts": [u.name for u in result.upserts],
            "deletes": [d.name for d in result.deletes],
            "conflicts": list(result.conflicts),
            "refused_deletes": list(result.refused_deletes),
        }
        self.m.ownership_conflicts.labels(self.label).set(len(result.conflicts))
        if result.conflicts != self._last_conflicts and result.conflicts:
            self.log.warning(
                "upstreams_not_owned",
                upstreams=list(result.conflicts),
                hint="present on the proxy but not created by dyups-syncer; add them to `adopt` "
                "or `owned_prefix` to manage them",
            )
        self._last_conflicts = result.conflicts
        self.m.plan_refused.labels(self.label).set(1 if result.refused else 0)
        if result.refused and result.refused_deletes != self._last_refused:
            self.m.plan_refused_total.labels(self.label).inc()
            self.log.error(
                "mass_delete_refused",
                deleting=len(result.refused_deletes),
                owned=result.owned_present,
                max_delete_fraction=self.s.max_delete_fraction,
                upstreams=list(result.refused_deletes)[:50],
                hint="send SIGUSR1 to the syncer to allow this deletion once",
            )
        self._last_refused = result.refused_deletes

    def _apply(self, desired: DesiredState, upserts: list[Upsert], deletes: list[Delete]) -> int:
        """Apply upserts then deletes (new servers before old ones go); returns failures."""
        failed = 0
        written = 0
        try:
            changes: list[Upsert | Delete] = [*upserts, *deletes]
            for change in changes:
                if self.stop.is_set() or not self._may_write():
                    return failed + 1
                if self._superseded(change):
                    # Its upstream changed again since the plan: the next plan (made at
                    # once, see _wait) sends the newer body. The rest of the batch is
                    # still current, so it goes on: abandoning it under a steady stream
                    # of changes starved the upstreams late in the batch.
                    self._dirty = True
                    self.m.superseded.labels(self.label).inc()
                    continue
                result = self._write(change)
                if result.outcome is Outcome.UNAVAILABLE:
                    raise ProxyUnavailable(result.body)
                if result.outcome.done and not self._delete_reached_every_worker(change):
                    result = WriteResult(Outcome.DEGRADED, None, "still held by a worker", 0.0)
                if result.outcome.done:
                    written += 1
                    self._failing.pop(change.name, None)
                    self._accepted(change, desired)
                else:
                    failed += 1
                    interrupted = self._superseded(change)
                    if result.outcome is not Outcome.REJECTED and not interrupted:
                        self._failed_round(change.name)
                    if (
                        isinstance(change, Upsert)
                        and result.outcome is not Outcome.REJECTED
                        and self._cache is not None
                    ):
                        self._cache.pop(change.name, None)  # state unknown: re-post next time
                    # A failed DELETE stays in the cache: dropped, the next plan would see
                    # an owned name neither desired nor present and release it, and the
                    # upstream would stay on the proxy, no longer ours to delete.
        except ProxyUnavailable as e:
            self._went_down(e)
            return failed + 1
        finally:
            if written and self.s.kick_gets:
                self._kick.set()
        return failed

    def _superseded(self, change: Upsert | Delete) -> bool:
        """Whether desired state no longer wants `change` (a newer version changed it)."""
        current = self.store.current().upstreams.get(change.name)
        if isinstance(change, Upsert):
            return current is None or current != self._planned_from.get(change.name)
        return current is not None

    def _write(self, change: Upsert | Delete) -> WriteResult:
        result: WriteResult = self._retrying(self._write_once, change)
        closes = self._closed_deletes.pop(change.name, 0)
        if closes:
            # No answer followed the closes (out of attempts, superseded, stopping):
            # count them as what a close usually is.
            self.m.conflicts.labels(self.label).inc(closes)
        return result

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def _build_retrying(self) -> tenacity.Retrying:
        """Built once per worker: constructing a Retrying (and a stop class) for every
        write cost about a tenth of the syncer's CPU in a rollout with 10 proxies."""

        def superseded_or_stopping(state: tenacity.RetryCallState) -> bool:
            # A lost lease (or shard) stops retries too: the next holder writes.
            return self.stop.is_set() or not self._may_write() or self._superseded(state.args[0])

        return tenacity.Retrying(
            retry=tenacity.retry_if_result(
                lambda r: r.outcome.retryable and r.outcome is not Outcome.UNAVAILABLE
            ),
            # Exponential backoff with jitter, capped (spelled out: the argument names
            # of wait_exponential_jitter differ across tenacity releases).
            wait=tenacity.wait_exponential(multiplier=self.s.retry_initial, max=self.s.retry_max)
            + tenacity.wait_random(0, self.s.retry_initial),
            stop=tenacity.stop_after_attempt(self.s.retry_attempts)
            | _StopWhen(superseded_or_stopping),
            sleep=self._sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )

    def _delete_reached_every_worker(self, change: Upsert | Delete) -> bool:
        """After a queue-full DELETE only the nginx worker that answered dropped the
        upstream, and a retry on the same connection reaches that worker again (404).
        Look for it through fresh connections (any worker) and delete it where seen,
        until enough fresh reads in a row no longer list it."""
        if not isinstance(change, Delete) or change.name not in self._degraded_deletes:
            return True
        needed = max(2, self.s.kick_gets)
        clean = 0
        for _ in range(4 * needed):
            if self.stop.is_set():
                return False
            if change.name in self.client.list_names(fresh=True):
                clean = 0
                self.client.delete(change.name, fresh=True)
            else:
                clean += 1
                if clean >= needed:
                    self._degraded_deletes.discard(change.name)
                    return True
        return False

    def _write_once(self, change: Upsert | Delete) -> WriteResult:
        cost = (
            message_cost(change.body) if isinstance(change, Upsert) else message_cost(change.name)
        )
        if not self._bucket.acquire(cost, self.stop):
            return WriteResult(Outcome.UNAVAILABLE, None, "stopping", 0.0)
        if isinstance(change, Upsert) and len(change.body) > self.s.max_body_size:
            # nginx would answer 413: refuse it here, without a request.
            result = WriteResult(
                Outcome.REJECTED,
                None,
                "body larger than max_body_size",
                0.0,
                f"{len(change.body)} bytes > {self.s.max_body_size}",
            )
            self._log_outcome(change, result)
            return result
        if isinstance(change, Upsert):
            method, result = "POST", self.client.upsert(change.upstream)
        else:
            method, result = "DELETE", self.client.delete(change.name)
            self._classify_closed_delete(change.name, result)
        self._observe_request(method, result.outcome.value, result.duration)
        self._log_outcome(change, result)
        return result

    def _classify_closed_delete(self, name: str, result: WriteResult) -> None:
        """A DELETE closed without an answer is a busy trylock, or a reload closing the
        connections (the retry may meet another pooled connection it closed). Which
        one, the first answer after them tells: after a reload the proxy no longer
        holds the name (404), after a busy lock it still does. So closes are counted in
        `conflicts_total` only then (or when no answer follows, in _write), and a
        reload does not show as conflicts."""
        if result.outcome is Outcome.CONFLICT and result.status is None:
            self._closed_deletes[name] = self._closed_deletes.get(name, 0) + 1
            return
        closes = self._closed_deletes.pop(name, 0)
        if not closes:
            return
        if result.outcome is Outcome.GONE:
            self.log.info("delete_closed_by_reload", upstream=name, closes=closes)
        else:
            self.m.conflicts.labels(self.label).inc(closes)

    def _log_outcome(self, change: Upsert | Delete, result: WriteResult) -> None:
        fields: dict[str, Any] = {
            "upstream": change.name,
            "outcome": result.outcome.value,
            "duration_ms": round(result.duration * 1000, 2),
        }
        if isinstance(change, Upsert):
            fields.update(reason=change.reason, servers=len(change.upstream.servers))
        event = "upstream_updated" if isinstance(change, Upsert) else "upstream_deleted"
        outcome = result.outcome
        if outcome.done:
            self.log.info(event, **fields)
        elif outcome is Outcome.CONFLICT:
            if result.status is not None:  # a closed DELETE is counted once classified
                self.m.conflicts.labels(self.label).inc()
            self.log.info(event, **fields, status=result.status)
        elif outcome is Outcome.REJECTED:
            self.m.rejected.labels(self.label).inc()
            assert isinstance(change, Upsert)
            self._rejected.add((change.name, change.upstream.digest))
            self.log.error(
                event,
                **fields,
                status=result.status,
                answer=result.body,
                body=change.body,
                hint="not resent until desired state changes",
            )
        elif outcome is Outcome.DEGRADED:
            self.m.degraded.labels(self.label).inc()
            if isinstance(change, Delete):
                self._degraded_deletes.add(change.name)
            self.log.error(
                event,
                **fields,
                answer=result.body,
                hint="the module's message queue is full: other nginx workers miss this "
                "change; waiting for the queue to drain, then posting again. Raise "
                "dyups_shm_zone_size or lower the write budget",
            )
            self._bucket.drain()
            self.stop.wait(self.s.read_msg_timeout)
        elif outcome is Outcome.VERIFY_FAILED:
            self.m.verify_failures.labels(self.label).inc()
            self.log.error(event, **fields, detail=result.detail, fix=FIX_TRUNCATION)
        else:
            self.log.warning(
                event,
                **fields,
                status=result.status,
                answer=result.body[:200],
                detail=result.detail,
            )

    def _accepted(self, change: Upsert | Delete, desired: DesiredState) -> None:
        assert self._cache is not None
        head = self.client.flavour is Flavour.HEAD
        if isinstance(change, Upsert):
            self._cache[change.name] = observed_after_post(change.upstream, head=head)
            self.store.record_applied(self.label, change.name, change.upstream.digest)
            if self._dumped is not None:
                self._dumped[change.name] = change.upstream
        else:
            self._cache.pop(change.name, None)
            self.store.release(self.label, [change.name])
            if self._dumped is not None:
                self._dumped.pop(change.name, None)
        changed_at = desired.changed_at.get(change.name)
        # Lag is measured once per source change; a later repair of the same
        # change is drift, not sync lag.
        if changed_at is not None and self._lag_recorded.get(change.name) != changed_at:
            self._lag_recorded[change.name] = changed_at
            self.m.sync_lag.labels(self.label).observe(max(0.0, self._wall() - changed_at))
        if isinstance(change, Delete):
            # A deleted name's change is done: keep no entry, or the map grows with
            # name churn (a name that comes back is a new change anyway).
            self._lag_recorded.pop(change.name, None)

    def _observe_request(self, method: str, outcome: str, duration: float) -> None:
        self.m.requests.labels(self.label, method, outcome).inc()
        self.m.request_duration.labels(self.label, method).observe(duration)

    # ----------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        record = self.store.proxy_record(self.label)
        return {
            "url": self.client.url,
            "up": self.up,
            "flavour": None if self.client.flavour is None else self.client.flavour.value,
            "reconciled_once": self.reconciled_once.is_set(),
            "following": self.following,
            "planned_version": self._planned_version,
            "owned": sorted(record.owned),
            "held": None if self._cache is None else len(self._cache),
            "last_plan": self.last_plan,
            "last_error": self.last_error,
            "rejected_bodies": sorted(name for name, _ in self._rejected),
            "failing": {name: count for name, (count, _) in self._failing.items()},
            # Per upstream under a traffic policy: each server's role here, and why.
            "traffic": {name: d.explain for name, d in sorted(self._decisions.items())},
        }
