"""The planner: desired × observed × ownership → the changes one proxy needs.

Pure: no I/O, no logging, no metrics. It returns data; the proxy worker turns it
into requests, metrics and log lines. Invariants (tested as properties):

* an upstream is posted only when what the proxy reports differs from what is
  desired (a POST resets balancer state, so a redundant POST is harmful);
* only upstreams the syncer owns are ever deleted or overwritten;
* a plan that deletes more than `max_delete_fraction` of the owned upstreams
  present on the proxy is refused (the deletes only; upserts still go ahead);
* planning what a plan's application produces yields no change (idempotence).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from syncer.model import ObservedUpstream, Upstream, body_hash


class Mode(StrEnum):
    SYNC = "sync"
    UPSERT_ONLY = "upsert-only"


@dataclass(frozen=True, slots=True)
class Ownership:
    """What the syncer may overwrite or delete on one proxy.

    `names`: upstreams it created there (remembered in the snapshot);
    `prefix`: every name starting with it is ours; `adopt`: names handed to us by config.
    """

    names: frozenset[str] = frozenset()
    prefix: str = ""
    adopt: frozenset[str] = frozenset()

    def owns(self, name: str) -> bool:
        return (
            name in self.names
            or name in self.adopt
            or bool(self.prefix and name.startswith(self.prefix))
        )


@dataclass(frozen=True, slots=True)
class PlanPolicy:
    mode: Mode = Mode.SYNC
    max_delete_fraction: float = 0.5
    # False while desired state comes from the snapshot and not yet from live
    # sources: restore what we know, but delete nothing on old information.
    deletes_allowed: bool = True
    # An operator lifted the mass-delete breaker for the current desired version.
    override_breaker: bool = False


@dataclass(frozen=True, slots=True)
class Upsert:
    upstream: Upstream
    reason: str  # "missing" | "changed" | "unverified"

    @property
    def name(self) -> str:
        return self.upstream.name

    @property
    def body(self) -> str:
        return self.upstream.render()


@dataclass(frozen=True, slots=True)
class Delete:
    name: str


@dataclass(frozen=True, slots=True)
class Plan:
    upserts: tuple[Upsert, ...] = ()
    deletes: tuple[Delete, ...] = ()
    # Desired names present on the proxy but not ours: reported, never written.
    conflicts: tuple[str, ...] = ()
    # Deletes the breaker held back.
    refused_deletes: tuple[str, ...] = ()
    # Names to record as ours before posting them (write-ahead, so a crash between
    # the POST and the snapshot never leaves an upstream we created but do not own).
    claims: tuple[str, ...] = ()
    # Owned names that are neither desired nor on the proxy any more: forget them.
    releases: tuple[str, ...] = ()
    owned_present: int = 0

    @property
    def empty(self) -> bool:
        return not (self.upserts or self.deletes)

    @property
    def refused(self) -> bool:
        return bool(self.refused_deletes)


def drift_reason(
    want: Upstream, have: ObservedUpstream | None, applied_hash: str | None
) -> str | None:
    """Why `have` needs `want` posted over it, or None when they match."""
    if have is None:
        return "missing"
    body = want.render()
    if have.body is not None:  # head flavour: the proxy shows exactly what was posted
        return None if have.body == body else "changed"
    if have.servers is None:
        return "changed"
    if want.has_hostnames:
        # /detail shows resolved addresses, never the host name posted: only our own
        # record of what we sent can tell whether it is current.
        return None if applied_hash == want.digest else "unverified"
    if have.servers != want.servers:
        return "changed"
    if applied_hash is None:
        # /detail does not show directives: without a record, post once to be sure.
        return "unverified" if want.directives else None
    return None if applied_hash == want.digest else "changed"


def plan(
    desired: Mapping[str, Upstream],
    observed: Mapping[str, ObservedUpstream],
    owned: Ownership,
    policy: PlanPolicy,
    *,
    applied: Mapping[str, str] | None = None,
) -> Plan:
    """Compute the changes that bring one proxy from `observed` to `desired`."""
    applied = applied or {}
    upserts: list[Upsert] = []
    conflicts: list[str] = []
    claims: list[str] = []
    for name in sorted(desired):
        have = observed.get(name)
        if have is not None and not owned.owns(name):
            conflicts.append(name)
            continue
        reason = drift_reason(desired[name], have, applied.get(name))
        if reason is None:
            continue
        if name not in owned.names:
            claims.append(name)
        upserts.append(Upsert(desired[name], reason))

    owned_present = [name for name in observed if owned.owns(name)]
    stale = sorted(name for name in owned_present if name not in desired)
    releases = tuple(sorted(n for n in owned.names if n not in desired and n not in observed))
    deletes: list[Delete] = []
    refused: list[str] = []
    if policy.mode is Mode.SYNC and policy.deletes_allowed and stale:
        if _breaker_trips(len(stale), len(owned_present), policy):
            refused = stale
        else:
            deletes = [Delete(name) for name in stale]
    return Plan(
        upserts=tuple(upserts),
        deletes=tuple(deletes),
        conflicts=tuple(conflicts),
        refused_deletes=tuple(refused),
        claims=tuple(claims),
        releases=releases,
        owned_present=len(owned_present),
    )


def _breaker_trips(deleting: int, owned_present: int, policy: PlanPolicy) -> bool:
    # One delete is always allowed: the breaker is about mass deletion, and a
    # single removed service must not need an operator.
    if policy.override_breaker or deleting <= 1 or owned_present == 0:
        return False
    return deleting / owned_present > policy.max_delete_fraction


def apply_to_observed(
    observed: Mapping[str, ObservedUpstream], result: Plan, *, head: bool
) -> dict[str, ObservedUpstream]:
    """What the proxy reports once `result` has been applied (used by tests and the worker cache)."""
    out = dict(observed)
    for upsert in result.upserts:
        out[upsert.name] = observed_after_post(upsert.upstream, head=head)
    for delete in result.deletes:
        out.pop(delete.name, None)
    return out


def observed_after_post(upstream: Upstream, *, head: bool) -> ObservedUpstream:
    body = upstream.render()
    return ObservedUpstream(
        name=upstream.name, servers=upstream.servers, body=body if head else None
    )


__all__ = [
    "Delete",
    "Mode",
    "Ownership",
    "Plan",
    "PlanPolicy",
    "Upsert",
    "apply_to_observed",
    "body_hash",
    "drift_reason",
    "observed_after_post",
    "plan",
]
