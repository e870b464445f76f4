"""Sharded leader election on Kubernetes: the proxies are split into `shards` shards,
each with a Lease of its own (`<lease_name>-<i>`); a replica writes the proxies of
the shards it holds, and a replica that holds none idles (its watches stay warm).

* **Safety** (one writer per shard) comes only from the per-shard Lease, contested
  by the rules of `syncer.leader.LeaseContest`: expiry judged on our own clock, a
  holder that cannot renew within `renew_deadline` stops writing that shard at
  once, a shard given up is released (holder cleared) so another replica takes it
  at once.
* **Membership**: each replica renews a Lease of its own (`<lease_name>-member-<hash
  of its identity>`) every `retry_period`, and lists the group's Leases (one LIST a
  round, by label) to count the live members: those it has seen renewed within
  `lease_duration` on its own clock. The expired membership Lease of a dead replica
  is deleted by whoever sees it (best effort, only if unchanged since seen).
* **Balance** (`syncer.sharding.rebalance`): a replica below its share takes free or
  expired shards, one above it releases its extra ones. Acquisitions start from the
  second round, once the replicas starting together have announced themselves.
* **Mixed configurations**: while a live replica runs with another shard count, or
  a leader of the single Lease (`shards: 1`, e.g. the old pods of a rollout that
  turns sharding on) still holds it, no proxy can be attributed to one writer, so
  this replica holds its shards but writes nothing; likewise in a round where the
  single Lease cannot be read (unknown is not free). The single Lease's ownership
  record is imported, so the upstreams its leader created stay ours.

Every shard Lease carries its holder's ownership record, as the single Lease does;
the store merges what it reads from each Lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

from kubernetes import client as k8s

from syncer.config import LeaderElectionConfig
from syncer.leader import LEASE_ERRORS, LeaseContest
from syncer.leadership import Tenure, default_identity, encode_payload
from syncer.metrics import Metrics
from syncer.sharding import (
    fair_share,
    member_lease_name,
    rebalance,
    shard_lease_name,
    shard_of,
)

T = TypeVar("T")

GROUP_LABEL = "dyups-syncer.io/lease-group"
ROLE_LABEL = "dyups-syncer.io/lease-role"
SHARDS_LABEL = "dyups-syncer.io/shards"
SHARD, MEMBER = "shard", "member"
# Why a shard stops being held: given up on purpose (released at once), or not.
REBALANCED, STOPPED = "rebalanced", "stopped"


class ShardElector:
    thread_name = "shard-election"

    def __init__(
        self,
        *,
        config: LeaderElectionConfig,
        api: k8s.ApiClient,
        metrics: Metrics,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
        payload: Callable[[], dict[str, Any]] = dict,
        on_payload: Callable[[dict[str, Any], str], None] = lambda data, origin: None,
    ) -> None:
        self.cfg = config
        self.identity = config.identity or default_identity()
        self.shards = config.shards
        self._api = k8s.CoordinationV1Api(api)
        self._metrics = metrics
        self.log = log.bind(
            lease_group=f"{config.namespace}/{config.lease_name}", identity=self.identity
        )
        self._clock = clock
        self._payload = payload
        self._on_payload = on_payload
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._encoded = encode_payload({})  # this round's ownership record, for every Lease
        self._contests = [
            self._contest(shard_lease_name(config.lease_name, i), SHARD) for i in range(self.shards)
        ]
        self._tenures = [
            Tenure(
                renew_deadline=config.renew_deadline,
                clock=clock,
                on_change=partial(self._shard_changed, i),
            )
            for i in range(self.shards)
        ]
        self._member = self._contest(member_lease_name(config.lease_name, self.identity), MEMBER)
        self._peers: dict[str, LeaseContest] = {}  # other members' Leases, followed by name
        self._strays: dict[str, LeaseContest] = {}  # shard Leases beyond `shards`, by name
        self._single = self._contest(config.lease_name, None)  # the Lease of `shards: 1`
        self._releasing: set[int] = set()  # given up last round, released this round
        self._members: frozenset[str] = frozenset({self.identity})
        self._holders: dict[int, str] = {}  # shards with another live holder
        self._quota = 0
        self._blocked_by = ""
        self._problems: dict[str, str] = {}  # per step, the last error logged
        self._rounds = 0
        self._shard_cache: dict[str, int] = {}
        metrics.leader.set(0)
        metrics.shards.set(self.shards)
        metrics.shards_held.set(0)

    def _contest(self, name: str, role: str | None) -> LeaseContest:
        labels = None
        if role is not None:
            labels = {
                GROUP_LABEL: self.cfg.lease_name,
                ROLE_LABEL: role,
                SHARDS_LABEL: str(self.shards),
            }
        return LeaseContest(
            api=self._api,
            name=name,
            namespace=self.cfg.namespace,
            identity=self.identity,
            lease_duration=self.cfg.lease_duration,
            log=self.log.bind(lease=name),
            clock=self._clock,
            # Shard Leases carry the holder's ownership record; membership Leases none.
            payload=(lambda: self._encoded) if role == SHARD else None,
            on_payload=lambda data: self._on_payload(data, name),
            labels=labels,
            request_timeout=self.cfg.renew_deadline,
        )

    # ------------------------------------------------------------ the writers' side
    def shard_of(self, proxy: str) -> int:
        shard = self._shard_cache.get(proxy)
        if shard is None:
            shard = self._shard_cache[proxy] = shard_of(proxy, self.shards)
        return shard

    def holds(self, shard: int) -> bool:
        """Checked before every write: false once the shard's renew deadline passed."""
        return self._tenures[shard].held()

    def may_write(self, proxy: str) -> bool:
        return not self._blocked_by and self.holds(self.shard_of(proxy))

    def is_leader(self) -> bool:
        """Holding at least one shard."""
        return any(tenure.held() for tenure in self._tenures)

    def held(self) -> list[int]:
        return [i for i, tenure in enumerate(self._tenures) if tenure.held()]

    def status(self, proxies: Iterable[str] = ()) -> dict[str, Any]:
        held = self.held()
        return {
            "identity": self.identity,
            "leading": bool(held),
            "lease_group": f"{self.cfg.namespace}/{self.cfg.lease_name}",
            "shards": self.shards,
            "held": held,
            "quota": self._quota,
            "fair_share": fair_share(self.shards, len(self._members)),
            "members": sorted(self._members),
            "holders": {
                str(i): self.identity if i in held else self._holders.get(i)
                for i in range(self.shards)
            },
            "writes_blocked": self._blocked_by or None,
            "proxies": {p: self.shard_of(p) for p in sorted(proxies)},
        }

    # -------------------------------------------------------------------- thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Leave the group, then release every shard, so the others take over at once
        (called once the workers have stopped: nothing writes any longer)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._attempt("leave", partial(self._member.delete, None))
        # The record written with each release must hold everything created until the
        # workers stopped, not what the last round saw: an upstream claimed since then
        # would look foreign to the next holder, for good.
        self._encoded = encode_payload(self._payload())
        for i, tenure in enumerate(self._tenures):
            if tenure.active or i in self._releasing:
                tenure.lose(STOPPED)
                self._contests[i].release()
        self._releasing.clear()
        self._metrics.leader.set(0)
        self._metrics.shards_held.set(0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except LEASE_ERRORS as e:
                self._problem("list", e)
            for tenure in self._tenures:
                tenure.check_deadline()
            self._update_gauges()
            self._stop.wait(self.cfg.retry_period)

    def _round(self) -> None:
        self._encoded = encode_payload(self._payload())  # once for every Lease written
        leases = self._list()
        self._problems.pop("list", None)
        self._renew_held(leases)  # first: what keeps our writers going
        self._hand_over()
        self._attempt("membership", partial(self._renew_membership, leases))
        members = self._live_members(leases)
        self._guard(members)
        self._observe_shards(leases)
        self._forget_stray_shards(leases)
        if self._rounds > 0:
            self._balance(leases)
        self._rounds += 1

    def _list(self) -> dict[str, k8s.V1Lease]:
        result = self._api.list_namespaced_lease(
            self.cfg.namespace,
            label_selector=f"{GROUP_LABEL}={self.cfg.lease_name}",
            _request_timeout=self.cfg.renew_deadline,
        )
        return {
            lease.metadata.name: lease
            for lease in result.items or []
            if lease.metadata and lease.metadata.name
        }

    # -------------------------------------------------------------------- shards
    def _renew_held(self, leases: Mapping[str, k8s.V1Lease]) -> None:
        for i, tenure in enumerate(self._tenures):
            if tenure.active:
                ok = self._contend(i, leases)
                if ok:
                    tenure.renewed()
                elif ok is False:
                    tenure.lose("lease taken by another holder")
                # An error: the renew deadline decides.

    def _hand_over(self) -> None:
        """Release what the last round gave up: a round after its writers stopped, so a
        write in flight then has finished before the next holder starts."""
        for i in sorted(self._releasing):
            self._contests[i].release()
        self._releasing.clear()

    def _observe_shards(self, leases: Mapping[str, k8s.V1Lease]) -> None:
        holders: dict[int, str] = {}
        for i, contest in enumerate(self._contests):
            lease = leases.get(contest.name)
            if self._tenures[i].active or lease is None:
                continue
            holder = contest.observe(lease).live_holder
            if holder and holder != self.identity:
                holders[i] = holder
        self._holders = holders

    def _forget_stray_shards(self, leases: Mapping[str, k8s.V1Lease]) -> None:
        """Shard Leases beyond `shards`, left by replicas that ran with more: followed
        (their holders' ownership records are imported, as every Lease's are) and
        deleted once released or expired, so that a lowered shard count leaves no
        Leases behind. One still held by a live replica stays (the guard blocks the
        writes while that replica runs)."""
        ours = {contest.name for contest in self._contests}
        strays: dict[str, LeaseContest] = {}
        for name, lease in leases.items():
            if _role(lease) != SHARD or name in ours:
                continue
            contest = self._strays.get(name) or self._contest(name, SHARD)
            strays[name] = contest
            seen = contest.observe(lease)
            if (not seen.holder or seen.expired) and lease.metadata is not None:
                version = lease.metadata.resource_version
                self._attempt(f"forget {name}", partial(contest.delete, version))
        self._strays = strays

    def _balance(self, leases: Mapping[str, k8s.V1Lease]) -> None:
        mine = [i for i, tenure in enumerate(self._tenures) if tenure.active]
        moves = rebalance(
            me=self.identity,
            shards=self.shards,
            members=self._members,
            holders=self._holders,
            mine=mine,
        )
        self._quota = moves.quota
        for i in moves.release:
            self._tenures[i].lose(REBALANCED)  # stop writing now, release next round
            self._releasing.add(i)
        for i in moves.acquire:
            if self._contend(i, leases):
                self._tenures[i].renewed()

    def _contend(self, shard: int, leases: Mapping[str, k8s.V1Lease]) -> bool | None:
        """Renew or take shard `shard`'s Lease: True if held now, None on an API error."""
        contest = self._contests[shard]
        return self._attempt(f"shard {shard}", partial(contest.contend, leases.get(contest.name)))

    def _shard_changed(self, shard: int, held: bool, why: str) -> None:
        if held:
            change = "acquired"
            self.log.info("shard_acquired", shard=shard)
        elif why in (REBALANCED, STOPPED):
            change = "released"
            self.log.info("shard_released", shard=shard, reason=why)
        else:
            change = "lost"
            self.log.warning("shard_lost", shard=shard, reason=why)
        self._metrics.shard_changes.labels(change).inc()
        self._update_gauges()

    # ---------------------------------------------------------------- membership
    def _renew_membership(self, leases: Mapping[str, k8s.V1Lease]) -> None:
        if not self._member.contend(leases.get(self._member.name)):
            self.log.warning(
                "membership_lease_taken",
                lease=self._member.name,
                hint="another replica runs with the same leader_election.identity",
            )

    def _live_members(self, leases: Mapping[str, k8s.V1Lease]) -> dict[str, k8s.V1Lease]:
        """The other live members' Leases, by identity; dead members' Leases go."""
        live: dict[str, k8s.V1Lease] = {}
        for name, lease in leases.items():
            if name == self._member.name or _role(lease) != MEMBER:
                continue
            peer = self._peers.get(name) or self._contest(name, MEMBER)
            self._peers[name] = peer
            seen = peer.observe(lease)
            if seen.live_holder:
                live[seen.live_holder] = lease
            elif seen.expired and lease.metadata is not None:
                version = lease.metadata.resource_version
                self._attempt(f"forget {name}", partial(peer.delete, version))
        self._peers = {name: peer for name, peer in self._peers.items() if name in leases}
        self._members = frozenset({self.identity, *live})
        return live

    def _guard(self, members: Mapping[str, k8s.V1Lease]) -> None:
        reasons = [
            f"replica {identity} runs with shards: {_labels(lease).get(SHARDS_LABEL, '?')}"
            for identity, lease in sorted(members.items())
            if _labels(lease).get(SHARDS_LABEL) != str(self.shards)
        ]
        single = self._attempt("single lease", self._read_single)
        if single is None:
            # Unknown is not free: a leader of the single Lease may have just started.
            reasons.append(f"the single Lease {self.cfg.lease_name} could not be read")
        elif single:
            reasons.append(f"{single} holds the single Lease {self.cfg.lease_name} (shards: 1)")
        blocked = "; ".join(reasons)
        if blocked != self._blocked_by:
            if blocked:
                self.log.warning("shard_writes_blocked", reason=blocked)
            else:
                self.log.info("shard_writes_unblocked")
        self._blocked_by = blocked

    def _read_single(self) -> str:
        """The live holder of the single Lease ("" if none). Its ownership record is
        imported; once it has expired it is deleted, so that a replica starting later
        does not wait `lease_duration` to learn it is dead."""
        lease = self._single.read()
        if lease is None:
            return ""
        seen = self._single.observe(lease)
        if seen.expired and lease.metadata is not None:
            self._single.delete(lease.metadata.resource_version)
        return seen.live_holder

    # -------------------------------------------------------------------- upkeep
    def _attempt(self, step: str, call: Callable[[], T]) -> T | None:
        """Run one request of the round; an API error is logged (once until it changes)
        and gives None, so one failing Lease does not stop the others."""
        try:
            result = call()
        except LEASE_ERRORS as e:
            self._problem(step, e)
            return None
        self._problems.pop(step, None)
        return result

    def _problem(self, step: str, error: BaseException) -> None:
        text = str(error)
        if self._problems.get(step) != text:
            self._problems[step] = text
            self.log.warning("lease_request_failed", step=step, error=text)

    def _update_gauges(self) -> None:
        held = sum(tenure.active for tenure in self._tenures)
        self._metrics.leader.set(int(held > 0))
        self._metrics.shards_held.set(held)
        self._metrics.shard_members.set(len(self._members))
        self._metrics.shards_unheld.set(self.shards - held - len(self._holders))
        self._metrics.shards_blocked.set(int(bool(self._blocked_by)))


def _labels(lease: k8s.V1Lease) -> dict[str, str]:
    return dict((lease.metadata.labels if lease.metadata else None) or {})


def _role(lease: k8s.V1Lease) -> str:
    return _labels(lease).get(ROLE_LABEL, "")
