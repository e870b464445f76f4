"""Traffic policies: the upstream one proxy should get, from the one the store holds.

Pure: no I/O, no logging, no clock. Applied between the store and the planner:
`for_proxy(upstream, proxy, now, times, held_empty=…)` for each upstream of each
proxy; the planner and the client do not change. The worker re-plans at the
latest at `Decision.next_change_at`, since the output depends on time.

Policies apply in this order, each to what the previous one left:

1. empty: while the service has no endpoint (`held_empty`), `keep` the last known
   servers (and go on), or replace them by the `fallback` servers, or mark them
   all `down` (both final: nothing else applies to a service with no endpoint);
2. drain: a draining server leaves primary rotation at once; with
   `drain_as_backup` it stays as `backup` for `drain_seconds`, else it is dropped;
3. zone: for a zone-aware upstream, servers of the proxy's zone stay primary and
   the others become `backup` (or, under ip_hash/random, which cannot have backup
   servers, the local ones get `local_weight_multiplier` × their weight), unless
   the local zone is too small; EndpointSlice hints decide instead of zones when
   every server carries them (as kube-proxy does);
4. slow start: a server first seen less than `slow_start` seconds ago gets a
   fraction of its weight, raised in steps.

Invariants (tested as properties): the output is a valid `Upstream` the module
accepts (at least one non-backup server, no backup under ip_hash/random, weights
in bounds, no draining server); the default policy with no draining server returns
the input object; the output does not change before `next_change_at`.

`DecisionMemo` keeps one proxy's decisions while they hold, so that a re-plan
costs O(1) per unchanged upstream; `topology_changed` tells a store that a
zone-aware upstream changed although it compares equal.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from syncer.model import (
    DEFAULT_TRAFFIC,
    MAX_WEIGHT,
    NO_BACKUP_BALANCERS,
    EmptyPolicy,
    ModelError,
    Server,
    TrafficPolicy,
    Upstream,
    label_value,
)


@dataclass(frozen=True, slots=True)
class ProxyTraits:
    """What a policy may know about a proxy. Proxies with equal traits get equal
    decisions, so a caller can compute once per distinct traits."""

    zone: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.zone, str) or label_value(self.zone) != self.zone:
            raise ModelError(f"proxy zone {self.zone!r} is not a valid label value")


@dataclass(frozen=True, slots=True)
class EndpointTimes:
    """When the syncer first saw a server in an upstream, and since when it drains.

    `first_seen` 0.0 means "was there before we started looking": it never ramps."""

    first_seen: float
    draining_since: float | None = None


# upstream name → server address → times
History = Mapping[str, Mapping[str, EndpointTimes]]


class Role(StrEnum):
    PRIMARY = "primary"
    BACKUP = "backup"
    DRAINING_BACKUP = "draining-backup"
    RAMPING = "ramping"
    DOWN = "down"
    FALLBACK = "fallback"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class Placement:
    """One server's fate on one proxy, and why (shown by /state)."""

    role: Role
    reason: str
    weight: int | None  # as rendered; None when dropped

    def as_json(self) -> dict[str, object]:
        return {"role": self.role.value, "reason": self.reason, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Decision:
    """The upstream a proxy should get, when that may change, and why.

    `upstream` is always valid and never holds a draining server; it keeps the
    input's `traffic` (never rendered). `next_change_at` is the earliest time after
    `now` at which the output would differ (a ramp step, a drain ending), or None.
    """

    upstream: Upstream
    at: float  # the `now` it was decided for; it holds until next_change_at
    next_change_at: float | None = None
    notes: tuple[str, ...] = ()
    # Per server address; None when no policy touched any server (derived on demand,
    # so the common path allocates nothing per server).
    placements: tuple[tuple[str, Placement], ...] | None = None

    @property
    def explain(self) -> dict[str, object]:
        """JSON-able: per server address its role, the reason and the rendered weight."""
        placements = self.placements
        if placements is None:
            placements = tuple((s.address, _as_given(s)) for s in self.upstream.servers)
        return {
            "upstream": self.upstream.name,
            "at": self.at,
            "policies": list(self.notes),
            "servers": {address: p.as_json() for address, p in placements},
            "next_change_at": self.next_change_at,
        }


def _as_given(server: Server) -> Placement:
    if server.down:
        return Placement(Role.DOWN, "down in the source", server.weight)
    if server.backup:
        return Placement(Role.BACKUP, "backup in the source", server.weight)
    return Placement(Role.PRIMARY, "in rotation", server.weight)


def topology_changed(old: Upstream | None, new: Upstream) -> bool:
    """Whether zones or hints changed in a way zone-aware proxies would see.

    They are not part of `Upstream` equality (a proxy cannot report them, so the
    planner must not compare them), so a store that detects changes with `!=`
    also needs this, or a hint-only change waits for the next real change.
    """
    if old is None or not new.traffic.zone_aware:
        return False
    return _topology(old) != _topology(new)


def _topology(upstream: Upstream) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    return tuple((s.address, s.zone, s.for_zones) for s in upstream.servers)


# ---------------------------------------------------------------- history


def advance_history(
    history: History,
    upstreams: Mapping[str, Upstream],
    now: float,
    *,
    known: Mapping[str, Upstream] | None = None,
) -> History:
    """The history for the desired state `upstreams` seen at `now`.

    Call it once per desired version (not per proxy). Only upstreams whose policy
    reads times are tracked; the others, gone upstreams and gone addresses are
    forgotten. A new address gets `first_seen=now`, except when nothing it could
    ramp against was known: in an upstream seen for the first time, in one whose
    addresses are all new, or when `known` (what the snapshot restored at start)
    already lists it; those get 0.0 and never ramp. `draining_since` is set when a
    server is first seen draining and cleared when it no longer is.
    """
    out: dict[str, Mapping[str, EndpointTimes]] = {}
    for name, upstream in upstreams.items():
        if not upstream.traffic.needs_history:
            continue
        before = history.get(name) or {}
        restored = known.get(name) if known else None
        old = set(before) | ({s.address for s in restored.servers} if restored else set())
        baseline = old.isdisjoint(s.address for s in upstream.servers)
        times = {
            s.address: _advance(s, before.get(s.address), old, baseline, now)
            for s in upstream.servers
        }
        # Keep the previous object when nothing moved: callers may memoise on it.
        out[name] = before if times == before else times
    return out


def _advance(
    server: Server, seen: EndpointTimes | None, old: set[str], baseline: bool, now: float
) -> EndpointTimes:
    if seen is None:
        first = 0.0 if baseline or server.address in old else now
        return EndpointTimes(first, now if server.draining else None)
    if server.draining == (seen.draining_since is not None):
        return seen
    return EndpointTimes(seen.first_seen, now if server.draining else None)


# ---------------------------------------------------------------- per proxy


def for_proxy(
    upstream: Upstream,
    proxy: ProxyTraits,
    now: float,
    times: Mapping[str, EndpointTimes] | None,
    *,
    held_empty: bool,
) -> Decision:
    """The upstream `proxy` should get at `now` (see the module docstring).

    `times` is this upstream's entry of the history (`advance_history`); a server
    missing from it neither ramps nor stays as a draining backup.
    """
    policy = upstream.traffic
    if _inert(upstream, policy, proxy, held_empty):
        # The hot path: most upstreams, most of the time. O(1), the input object.
        return Decision(upstream, now, notes=_inert_notes(policy, proxy, held_empty))
    if held_empty and policy.empty is EmptyPolicy.FALLBACK:
        return _fallback(upstream, policy, now)
    if held_empty and policy.empty is EmptyPolicy.DOWN:
        return _all_down(upstream, now)
    return _Run(upstream, policy, proxy, now, times or {}, held_empty).decide()


def _inert(upstream: Upstream, policy: TrafficPolicy, proxy: ProxyTraits, held: bool) -> bool:
    """True when no policy can change a server (without looking at the servers)."""
    return not (
        upstream.has_draining
        or policy.slow_start > 0
        or (policy.zone_aware and proxy.zone)
        or (held and policy.empty is not EmptyPolicy.KEEP)
    )


def _inert_notes(policy: TrafficPolicy, proxy: ProxyTraits, held: bool) -> tuple[str, ...]:
    if not (held or policy.zone_aware):
        return ()
    notes: list[str] = []
    if held:
        notes.append(_HELD_NOTE)
    if policy.zone_aware:
        notes.append("zone: the proxy's zone is unknown: all primary")
    return tuple(notes)


_HELD_NOTE = "empty: the service has no endpoint: the last known servers are kept"


def _fallback(upstream: Upstream, policy: TrafficPolicy, now: float) -> Decision:
    reason = "the service has no endpoint"
    placements = [
        (s.address, Placement(Role.DROPPED, f"{reason}: replaced by the fallback", None))
        for s in upstream.servers
    ]
    placements += [
        (s.address, Placement(Role.FALLBACK, f"{reason} (empty: fallback)", s.weight))
        for s in policy.fallback
    ]
    out = Upstream(upstream.name, policy.fallback, upstream.directives, upstream.traffic)
    return Decision(
        out,
        now,
        notes=(f"empty: {reason}: fallback servers instead",),
        placements=_dedupe(placements),
    )


def _all_down(upstream: Upstream, now: float) -> Decision:
    reason = "the service has no endpoint (empty: down)"
    servers = tuple(s.adjusted(down=True) for s in upstream.servers)
    out = Upstream(upstream.name, servers, upstream.directives, upstream.traffic)
    placements = tuple((s.address, Placement(Role.DOWN, reason, s.weight)) for s in servers)
    return Decision(out, now, notes=(f"empty: {reason}: all servers down",), placements=placements)


def _dedupe(placements: Iterable[tuple[str, Placement]]) -> tuple[tuple[str, Placement], ...]:
    # A fallback server may have the address of a held one: the later entry wins.
    return tuple(dict(placements).items())


@dataclass(slots=True)
class _Slot:
    """One server on its way through the policies."""

    server: Server
    role: Role
    reason: str


class _Run:
    """One application of drain → zone → slow start to one upstream for one proxy."""

    def __init__(
        self,
        upstream: Upstream,
        policy: TrafficPolicy,
        proxy: ProxyTraits,
        now: float,
        times: Mapping[str, EndpointTimes],
        held_empty: bool,
    ) -> None:
        self.upstream = upstream
        self.policy = policy
        self.proxy = proxy
        self.now = now
        self.times = times
        balancer = next((d.name for d in upstream.directives if d.is_balancer), "")
        # ip_hash and random refuse backup servers: nothing may become backup.
        self.no_backup = balancer if balancer in NO_BACKUP_BALANCERS else ""
        self.slots = [_Slot(s, *_initial(s)) for s in upstream.servers]
        self.notes: list[str] = [_HELD_NOTE] if held_empty else []
        self.changes: list[float] = []

    def decide(self) -> Decision:
        self.drain()
        self.zone()
        self.slow_start()
        kept = [slot for slot in self.slots if slot.role is not Role.DROPPED]
        touched = len(kept) != len(self.upstream.servers) or any(
            slot.server is not original
            for slot, original in zip(self.slots, self.upstream.servers, strict=True)
        )
        out = self.upstream
        if touched:
            servers = tuple(slot.server for slot in kept)
            out = Upstream(out.name, servers, out.directives, out.traffic)
        placements = tuple((slot.server.address, self._placement(slot)) for slot in self.slots)
        return Decision(
            out,
            self.now,
            next_change_at=min(self.changes, default=None),
            notes=tuple(self.notes),
            placements=placements,
        )

    @staticmethod
    def _placement(slot: _Slot) -> Placement:
        weight = None if slot.role is Role.DROPPED else slot.server.weight
        return Placement(slot.role, slot.reason, weight)

    # ------------------------------------------------------------ drain

    def drain(self) -> None:
        for slot in self.slots:
            if slot.server.draining:
                self._drain_one(slot)

    def _drain_one(self, slot: _Slot) -> None:
        seen = self.times.get(slot.server.address)
        since = seen.draining_since if seen else None
        if not self.policy.drain_as_backup:
            slot.role, slot.reason = Role.DROPPED, "draining: out of rotation at once"
        elif self.no_backup:
            slot.role = Role.DROPPED
            slot.reason = f"draining: out at once ({self.no_backup} cannot have backup servers)"
        elif since is None:
            # Without a start time there is no end time: dropping is the safe side.
            slot.role, slot.reason = Role.DROPPED, "draining: start not recorded: out at once"
        elif self.now >= since + self.policy.drain_seconds:
            slot.role = Role.DROPPED
            slot.reason = (
                f"draining since {since}: drain_seconds {self.policy.drain_seconds:g} over"
            )
        else:
            until = since + self.policy.drain_seconds
            slot.server = slot.server.adjusted(backup=True)
            slot.role, slot.reason = Role.DRAINING_BACKUP, f"draining: backup until {until}"
            self.changes.append(until)

    # ------------------------------------------------------------ zone

    def zone(self) -> None:
        if not self.policy.zone_aware:
            return
        zone = self.proxy.zone
        if not zone:
            self.notes.append("zone: the proxy's zone is unknown: all primary")
            return
        candidates = [slot for slot in self.slots if slot.role is Role.PRIMARY]
        hinted = bool(candidates) and all(slot.server.for_zones for slot in candidates)
        if not hinted and not any(slot.server.zone for slot in candidates):
            self.notes.append("zone: no endpoint's zone is known: all primary")
            return
        if hinted:
            local = [slot for slot in candidates if zone in slot.server.for_zones]
            here = f"hinted for zone {zone}"
        else:
            local = [slot for slot in candidates if slot.server.zone == zone]
            here = f"local zone {zone}"
        n_local, n_all = len(local), len(candidates)
        refusal = self._too_few(n_local, n_all)
        if refusal:
            self.notes.append(f"zone: proxy in {zone}: {refusal}: all primary")
            for slot in candidates:
                slot.reason = f"zone fallback: {refusal}"
            return
        for slot in local:
            slot.reason = here
        if n_local == n_all:
            self.notes.append(f"zone: proxy in {zone}: every endpoint is local")
            return
        local_ids = {id(slot) for slot in local}
        remote = [slot for slot in candidates if id(slot) not in local_ids]
        self._split(local, remote, n_local, hinted)

    def _too_few(self, n_local: int, n_all: int) -> str:
        """Why the local zone cannot carry the traffic alone, or ""."""
        min_local = self.policy.min_local
        fraction = self.policy.min_local_fraction
        if n_local < min_local:
            return f"local has {n_local} < min_local {min_local}"
        if n_local < fraction * n_all:
            return f"local has {n_local} of {n_all} < min_local_fraction {fraction:g}"
        return ""

    def _split(self, local: list[_Slot], remote: list[_Slot], n_local: int, hinted: bool) -> None:
        zone = self.proxy.zone
        enough = f"local has {n_local} ≥ min_local {self.policy.min_local}"
        if self.no_backup:
            multiplier = self.policy.local_weight_multiplier
            for slot in local:
                weight = min(MAX_WEIGHT, slot.server.weight * multiplier)
                slot.server = slot.server.adjusted(weight=weight)
                slot.reason += (
                    f", weight ×{multiplier} ({self.no_backup} cannot have backup servers)"
                )
            for slot in remote:
                slot.reason = f"cross-zone ({_where(slot.server, hinted)}): {enough}; weight kept"
            self.notes.append(f"zone: proxy in {zone}: {enough}: local weight ×{multiplier}")
            return
        for slot in remote:
            slot.server = slot.server.adjusted(backup=True)
            slot.role = Role.BACKUP
            slot.reason = f"cross-zone ({_where(slot.server, hinted)}): {enough}"
        self.notes.append(f"zone: proxy in {zone}: {enough}: cross-zone servers are backup")

    # ------------------------------------------------------------ slow start

    def slow_start(self) -> None:
        if self.policy.slow_start <= 0:
            return
        for slot in self.slots:
            if slot.role in (Role.PRIMARY, Role.BACKUP) and not slot.server.down:
                self._ramp_one(slot)

    def _ramp_one(self, slot: _Slot) -> None:
        seen = self.times.get(slot.server.address)
        span, steps = self.policy.slow_start, self.policy.slow_start_steps
        if seen is None or self.now >= ramp_step_start(seen.first_seen, span, steps, steps):
            return
        full = slot.server.weight
        step, weight, next_at = ramp(full, seen.first_seen, self.now, span, steps)
        if weight == full:
            return  # a weight of 1 cannot be lowered: nothing to ramp (and next_at is None)
        if next_at is not None:
            self.changes.append(next_at)
        slot.server = slot.server.adjusted(weight=weight)
        ramp_text = f"slow start: step {step} of {steps}, weight {weight} of {full}"
        if slot.role is Role.PRIMARY:
            slot.role, slot.reason = Role.RAMPING, f"{ramp_text} ({slot.reason})"
        else:
            slot.reason += f"; {ramp_text}"


def _initial(server: Server) -> tuple[Role, str]:
    placement = _as_given(server)
    return placement.role, placement.reason


def _where(server: Server, hinted: bool) -> str:
    if hinted:
        return "hinted for " + ",".join(server.for_zones)
    return f"zone {server.zone}" if server.zone else "zone unknown"


# ---------------------------------------------------------------- memo


@dataclass(frozen=True, slots=True)
class _Memo:
    upstream: Upstream
    times: Mapping[str, EndpointTimes] | None
    held_empty: bool
    decision: Decision


class DecisionMemo:
    """Decisions for one proxy, reused while they hold.

    A decision for (upstream, times, held_empty) taken at `at` holds for any `now`
    in [at, next_change_at): the output does not change in between (a tested
    property). Store versions and `advance_history` hand out the same objects for
    what did not change, so entries are matched by identity, and a re-plan only
    recomputes what changed. One per proxy worker; not shared between threads.
    """

    def __init__(self, proxy: ProxyTraits) -> None:
        self.proxy = proxy
        self._entries: dict[str, _Memo] = {}

    def decide(
        self,
        upstream: Upstream,
        now: float,
        times: Mapping[str, EndpointTimes] | None,
        *,
        held_empty: bool,
    ) -> Decision:
        memo = self._entries.get(upstream.name)
        if (
            memo is not None
            and memo.upstream is upstream
            and memo.times is times
            and memo.held_empty == held_empty
            and _holds(memo.decision, now)
        ):
            return memo.decision
        decision = for_proxy(upstream, self.proxy, now, times, held_empty=held_empty)
        if decision.placements is None:
            self._entries.pop(upstream.name, None)  # the O(1) path: nothing worth keeping
        else:
            self._entries[upstream.name] = _Memo(upstream, times, held_empty, decision)
        return decision

    def decide_all(
        self,
        desired: Mapping[str, Upstream],
        now: float,
        history: History,
        *,
        held_empty: Collection[str] = (),
    ) -> dict[str, Decision]:
        """Decisions for every desired upstream; forgets upstreams no longer desired."""
        out = {
            name: self.decide(upstream, now, history.get(name), held_empty=name in held_empty)
            for name, upstream in desired.items()
        }
        for name in [n for n in self._entries if n not in desired]:
            del self._entries[name]
        return out


def _holds(decision: Decision, now: float) -> bool:
    until = decision.next_change_at
    return decision.at <= now and (until is None or now < until)


def next_change(decisions: Iterable[Decision]) -> float | None:
    """When the worker must re-plan at the latest, because an output changes then."""
    return min((d.next_change_at for d in decisions if d.next_change_at is not None), default=None)


# ---------------------------------------------------------------- the ramp


def ramp_step_start(first_seen: float, span: float, step: int, steps: int) -> float:
    """When step `step` (1..steps) of a ramp begins.

    Step 1 begins at `first_seen`, the last one (full weight) exactly at
    `first_seen + span`, the others evenly in between. Non-decreasing in `step`.
    """
    if step >= steps:
        return first_seen + span  # exact: the ramp ends at first_seen + slow_start
    return first_seen + span * (step - 1) / (steps - 1)


def ramp_weight(full: int, step: int, steps: int) -> int:
    """The weight at step `step`: `full × step / steps`, at least 1."""
    return max(1, full * step // steps)


def ramp(
    full: int, first_seen: float, now: float, span: float, steps: int
) -> tuple[int, int, float | None]:
    """(step, weight, when the weight next changes or None) of a ramp at `now`."""
    step = 1
    while step < steps and ramp_step_start(first_seen, span, step + 1, steps) <= now:
        step += 1
    weight = ramp_weight(full, step, steps)
    for later in range(step + 1, steps + 1):
        if ramp_weight(full, later, steps) != weight:
            return step, weight, ramp_step_start(first_seen, span, later, steps)
    return step, weight, None


__all__ = [
    "Decision",
    "DecisionMemo",
    "EndpointTimes",
    "History",
    "Placement",
    "ProxyTraits",
    "Role",
    "advance_history",
    "for_proxy",
    "next_change",
    "ramp",
    "ramp_step_start",
    "ramp_weight",
    "topology_changed",
]


# ---------------------------------------------------------------- from text

# The keys a Service annotation (`dyups-syncer.io/<key>`), a Consul service meta
# (`dyups-<key>`) or a file source upstream (`traffic: {<key>: …}`, also with `_`)
# may set; values are strings, as annotations and meta are.
POLICY_KEYS = (
    "zone-aware",
    "min-local",
    "min-local-fraction",
    "local-weight-multiplier",
    "slow-start",
    "slow-start-steps",
    "empty",
    "fallback",
    "drain-as-backup",
    "drain-seconds",
)
_SECONDS_RE = re.compile(r"([0-9]{1,9})(?:\.([0-9]{1,3}))?(ms|s|m)?")
_INT_RE = re.compile(r"[0-9]{1,9}")
_FRACTION_RE = re.compile(r"(?:0|1)(?:\.[0-9]{1,17})?|\.[0-9]{1,17}")
_FLAGS = {"true": True, "yes": True, "on": True, "1": True}
_FLAGS.update({"false": False, "no": False, "off": False, "0": False})


class PolicyFieldError(ModelError):
    """A traffic-policy value that cannot be used; `key` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.detail = message  # without the key (a rejection's field names it)


def policy_from_fields(fields: Mapping[str, str], base: TrafficPolicy) -> TrafficPolicy:
    """`base` with the policy keys present in `fields` applied (others ignored).

    Strict: every value is a short plain word or number, so nothing from an
    annotation or a tag can reach a rendered body except through `Server`."""
    changes: dict[str, object] = {}
    for key in POLICY_KEYS:
        raw = fields.get(key)
        if raw is None:
            continue
        if not isinstance(raw, str) or len(raw) > 512:
            raise PolicyFieldError(key, f"must be a short string, got {raw!r}")
        value = raw.strip()
        attr = key.replace("-", "_")
        changes[attr] = _policy_value(key, value)
    if not changes:
        return base
    if changes.get("empty") not in (None, EmptyPolicy.FALLBACK) and "fallback" not in changes:
        changes["fallback"] = ()  # another empty policy drops an inherited fallback
    try:
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
    except ModelError as e:
        # Name the key at fault: the first one that fails alone (`min-local: 0`), else
        # the first one given (a combination: `empty: fallback` without `fallback`).
        paired = {"empty": "fallback", "fallback": "empty"}  # valid only together
        for attr, new in changes.items():
            trial = {attr: new}
            if paired.get(attr) in changes:
                trial[paired[attr]] = changes[paired[attr]]
            try:
                dataclasses.replace(base, **trial)  # type: ignore[arg-type]
            except ModelError as alone:
                raise PolicyFieldError(attr.replace("_", "-"), str(alone)) from e
        raise PolicyFieldError(next(iter(changes)).replace("_", "-"), str(e)) from e


def _policy_value(key: str, value: str) -> object:
    if key in ("zone-aware", "drain-as-backup"):
        flag = _FLAGS.get(value.lower())
        if flag is None:
            raise PolicyFieldError(key, f"must be true or false, got {value!r}")
        return flag
    if key in ("min-local", "local-weight-multiplier", "slow-start-steps"):
        if not _INT_RE.fullmatch(value):
            raise PolicyFieldError(key, f"must be a whole number, got {value!r}")
        return int(value)
    if key == "min-local-fraction":
        if not _FRACTION_RE.fullmatch(value):
            raise PolicyFieldError(key, f"must be a fraction between 0 and 1, got {value!r}")
        return float(value)
    if key in ("slow-start", "drain-seconds"):
        return _seconds(key, value)
    if key == "empty":
        try:
            return EmptyPolicy(value.lower())
        except ValueError:
            allowed = ", ".join(p.value for p in EmptyPolicy)
            raise PolicyFieldError(key, f"must be one of {allowed}, got {value!r}") from None
    return _fallback_servers(key, value)


def _seconds(key: str, value: str) -> float:
    match = _SECONDS_RE.fullmatch(value)
    if not match:
        raise PolicyFieldError(key, f"must be a duration like 30s, 500ms or 2m, got {value!r}")
    number = float(f"{match.group(1)}.{match.group(2) or 0}")
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(3)]


def _fallback_servers(key: str, value: str) -> tuple[Server, ...]:
    """`host:port[,host:port…]`: IP literals only (no DNS from an annotation)."""
    servers: list[Server] = []
    for part in value.split(","):
        address = part.strip()
        match = _ADDRESS_RE.fullmatch(address)
        if not match:
            raise PolicyFieldError(key, f"must be IP:port[,IP:port], got {address!r}")
        host = match.group("v6") or match.group("v4")
        try:
            servers.append(Server(host, int(match.group("port"))))
        except ModelError as e:
            raise PolicyFieldError(key, str(e)) from e
    return tuple(servers)


_ADDRESS_RE = re.compile(
    r"(?:\[(?P<v6>[0-9a-fA-F:.]{2,45})\]|(?P<v4>[0-9.]{7,15})):(?P<port>[0-9]{1,5})"
)


# ---------------------------------------------------------------- snapshot

# The body alone does not carry what policies read (it is never rendered): the
# snapshot keeps it beside the body for upstreams under a policy, so a restart
# with the source down plans the same per-proxy upstreams as before.


def policy_fields(policy: TrafficPolicy) -> dict[str, str]:
    """The inverse of `policy_from_fields` (every key, as text)."""
    fields = {
        "zone-aware": str(policy.zone_aware).lower(),
        "min-local": str(policy.min_local),
        "min-local-fraction": repr(policy.min_local_fraction),
        "local-weight-multiplier": str(policy.local_weight_multiplier),
        "slow-start": f"{round(policy.slow_start * 1000)}ms",
        "slow-start-steps": str(policy.slow_start_steps),
        "empty": policy.empty.value,
        "drain-as-backup": str(policy.drain_as_backup).lower(),
        "drain-seconds": f"{round(policy.drain_seconds * 1000)}ms",
    }
    if policy.fallback:
        fields["fallback"] = ",".join(s.address for s in policy.fallback)
    return fields


def policy_meta(upstream: Upstream) -> dict[str, object] | None:
    """What the snapshot keeps beside the body; None for an upstream under no policy."""
    if upstream.traffic == DEFAULT_TRAFFIC and not upstream.has_draining:
        return None
    servers: dict[str, dict[str, object]] = {}
    for s in upstream.servers:
        entry: dict[str, object] = {}
        if s.zone:
            entry["zone"] = s.zone
        if s.node:
            entry["node"] = s.node
        if s.for_zones:
            entry["for_zones"] = list(s.for_zones)
        if s.draining:
            entry["draining"] = True
        if entry:
            servers[s.address] = entry
    return {"traffic": policy_fields(upstream.traffic), "servers": servers}


def with_policy_meta(upstream: Upstream, meta: Mapping[str, object]) -> Upstream:
    """`upstream` (rebuilt from its body) with what `policy_meta` kept; ModelError if
    the entry is not what `policy_meta` writes."""
    traffic, servers = meta.get("traffic"), meta.get("servers")
    if not isinstance(traffic, Mapping) or not isinstance(servers, Mapping):
        raise ModelError(f"upstream {upstream.name!r}: malformed policy entry")
    policy = policy_from_fields(traffic, DEFAULT_TRAFFIC)
    rebuilt: list[Server] = []
    for server in upstream.servers:
        extra = servers.get(server.address) or {}
        if not isinstance(extra, Mapping):
            raise ModelError(f"upstream {upstream.name!r}: malformed entry of {server.address}")
        for_zones = extra.get("for_zones", [])
        if not isinstance(for_zones, list):
            raise ModelError(f"upstream {upstream.name!r}: for_zones must be a list")
        rebuilt.append(
            dataclasses.replace(
                server,
                zone=extra.get("zone", ""),
                node=extra.get("node", ""),
                for_zones=tuple(for_zones),
                draining=extra.get("draining", False),
            )
        )
    return Upstream(upstream.name, tuple(rebuilt), upstream.directives, traffic=policy)
