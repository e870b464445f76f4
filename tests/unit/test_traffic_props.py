"""Properties of the traffic policies, over random upstreams, policies, proxies and times."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.model import (
    MAX_WEIGHT,
    NO_BACKUP_BALANCERS,
    Directive,
    EmptyPolicy,
    Server,
    TrafficPolicy,
    Upstream,
)
from syncer.traffic import (
    Decision,
    DecisionMemo,
    EndpointTimes,
    ProxyTraits,
    advance_history,
    for_proxy,
    ramp,
    ramp_step_start,
)
from tests.fuzz.checks import check_body

ZONES = ["a", "b", "c"]
NOW_MAX = 2e9
FALLBACK = (Server("10.0.0.1", 80, weight=5), Server("10.0.1.1", 80))


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True with probability 1/n: keeps rare flags rare enough for the others to matter."""
    return st.integers(0, n - 1).map(lambda x: x == 0)


weights = st.one_of(st.integers(1, 12), st.integers(1, MAX_WEIGHT), st.just(MAX_WEIGHT))
nows = st.one_of(st.floats(0, 1e4), st.floats(1.6e9, NOW_MAX))


fractions = st.one_of(st.sampled_from([0.0, 0.2, 0.25, 1 / 3, 0.5, 1.0]), st.floats(0, 1))
durations = st.one_of(st.sampled_from([0.0, 30.0, 600.0]), st.floats(0.001, 86400))


@st.composite
def policies(draw: st.DrawFn, zone_aware: Any = None) -> TrafficPolicy:
    empty = draw(st.sampled_from(EmptyPolicy))
    return TrafficPolicy(
        zone_aware=draw(st.booleans()) if zone_aware is None else zone_aware,
        min_local=draw(st.integers(1, 4)),
        min_local_fraction=draw(fractions),
        local_weight_multiplier=draw(st.one_of(st.integers(1, 20), st.just(MAX_WEIGHT))),
        slow_start=draw(st.one_of(st.just(0.0), durations)),
        slow_start_steps=draw(st.integers(2, 7)),
        empty=empty,
        fallback=FALLBACK if empty is EmptyPolicy.FALLBACK else (),
        drain_as_backup=draw(st.booleans()),
        drain_seconds=draw(durations),
    )


@st.composite
def upstreams(draw: st.DrawFn, policy: Any = None) -> Upstream:
    balancer = draw(st.sampled_from(["", "", "least_conn", "ip_hash", "random"]))
    no_backup = balancer in NO_BACKUP_BALANCERS
    hints = draw(st.sampled_from(["none", "all", "some"]))
    servers = []
    for i in range(draw(st.integers(1, 10))):
        hinted = hints == "all" or (hints == "some" and draw(st.booleans()))
        servers.append(
            Server(
                f"10.0.0.{i + 1}",
                80,
                weight=draw(weights),
                zone=draw(st.sampled_from(["", *ZONES])),
                for_zones=tuple(draw(st.sets(st.sampled_from(ZONES), min_size=1)))
                if hinted
                else (),
                # the first server keeps the upstream valid: neither backup nor draining
                backup=i > 0 and not no_backup and draw(one_in(5)),
                draining=i > 0 and draw(one_in(3)),
                down=draw(one_in(6)),
            )
        )
    directives = (Directive(balancer),) if balancer else ()
    if policy is None:
        policy = policies()
    if isinstance(policy, st.SearchStrategy):
        policy = draw(policy)
    return Upstream("web", tuple(servers), directives, policy)


@st.composite
def histories(draw: st.DrawFn, upstream: Upstream, now: float) -> dict[str, EndpointTimes]:
    times = {}
    for server in upstream.servers:
        if draw(one_in(10)):
            continue  # not in the history: a caller that forgot to advance it
        first = draw(st.one_of(st.just(0.0), st.floats(now - 2000, now + 50)))
        since = None
        if server.draining and not draw(one_in(5)):
            since = draw(st.floats(now - 700, now))
        times[server.address] = EndpointTimes(first, since)
    return times


@dataclass
class Case:
    upstream: Upstream
    proxy: ProxyTraits
    now: float
    times: dict[str, EndpointTimes]
    held_empty: bool

    def at(self, now: float) -> Decision:
        return for_proxy(self.upstream, self.proxy, now, self.times, held_empty=self.held_empty)


@st.composite
def cases(draw: st.DrawFn, policy: Any = None, proxy_zones: tuple[str, ...] = ("", *ZONES)) -> Case:
    upstream = draw(upstreams(policy))
    now = draw(nows)
    return Case(
        upstream,
        ProxyTraits(draw(st.sampled_from(proxy_zones))),
        now,
        draw(histories(upstream, now)),
        draw(one_in(4)),
    )


def check_accepted_by_dyups(decision: Decision, source: Upstream) -> None:
    out = decision.upstream
    statements = check_body(out.body)
    servers = [s.startswith("server ") for s in statements]
    # servers first: no balancer directive can precede a backup server
    assert servers == sorted(servers, reverse=True), out.body
    assert any(not s.backup for s in out.servers), f"only backup servers: {out.body}"
    if any(d.name in NO_BACKUP_BALANCERS for d in out.directives):
        assert not any(s.backup for s in out.servers), out.body
    assert not any(s.draining for s in out.servers)
    assert all(1 <= s.weight <= MAX_WEIGHT for s in out.servers)
    given_addresses = {s.address for s in (*source.servers, *source.traffic.fallback)}
    assert {s.address for s in out.servers} <= given_addresses


@settings(max_examples=120, deadline=None)
@given(cases())
def test_no_output_dyups_would_reject(case: Case) -> None:
    decision = case.at(case.now)
    check_accepted_by_dyups(decision, case.upstream)
    explain = json.loads(json.dumps(decision.explain))
    out = {s.address: s for s in decision.upstream.servers}
    for address, info in explain["servers"].items():
        assert (info["role"] == "dropped") == (address not in out)
        if address in out:
            assert info["weight"] == out[address].weight
    assert set(out) <= set(explain["servers"])


@settings(max_examples=50, deadline=None)
@given(cases(policy=TrafficPolicy()))
def test_default_policy_is_identity(case: Case) -> None:
    if case.upstream.has_draining:
        return
    assert case.at(case.now).upstream is case.upstream


@settings(max_examples=120, deadline=None)
@given(cases(), st.data())
def test_nothing_changes_before_next_change_at(case: Case, data: st.DataObject) -> None:
    decision = case.at(case.now)
    change = decision.next_change_at
    if change is None:
        later = data.draw(st.floats(case.now, case.now + 1e6))
        assert case.at(later).upstream.body == decision.upstream.body
        return
    assert change > case.now
    later = data.draw(st.floats(case.now, change, exclude_max=True))
    assert case.at(later).upstream.body == decision.upstream.body
    # and it is the earliest change: at next_change_at something does change
    assert case.at(change).upstream.body != decision.upstream.body


@settings(max_examples=120, deadline=None)
@given(cases(policy=policies(zone_aware=True), proxy_zones=tuple(ZONES)))
def test_zone_split_follows_the_thresholds(case: Case) -> None:
    policy = case.upstream.traffic
    zone = case.proxy.zone
    if case.held_empty and policy.empty is not EmptyPolicy.KEEP:
        return
    candidates = [s for s in case.upstream.servers if not (s.backup or s.down or s.draining)]
    hinted = all(s.for_zones for s in candidates)
    local = {s.address for s in candidates if (zone in s.for_zones if hinted else s.zone == zone)}
    split = (
        policy.zone_aware
        and bool(zone)
        and (hinted or any(s.zone for s in candidates))
        and policy.min_local <= len(local) < len(candidates)
        and len(local) >= policy.min_local_fraction * len(candidates)
    )
    no_backup = any(d.name in NO_BACKUP_BALANCERS for d in case.upstream.directives)
    out = {s.address: s for s in case.at(case.now).upstream.servers}
    for server in candidates:
        got = out[server.address]
        assert got.backup == (split and not no_backup and server.address not in local)
        if policy.slow_start == 0:
            lifted = split and no_backup and server.address in local
            multiplier = policy.local_weight_multiplier if lifted else 1
            assert got.weight == min(MAX_WEIGHT, server.weight * multiplier)


@given(
    full=weights,
    first=nows,
    span=st.floats(0.001, 86400),
    steps=st.integers(2, 100),
    offsets=st.lists(st.floats(-100, 1e5), min_size=2, max_size=6),
)
def test_ramp_is_monotonic_bounded_and_ends_at_full_weight(
    full: int, first: float, span: float, steps: int, offsets: list[float]
) -> None:
    previous = 0
    for t in sorted(first + o for o in offsets):
        step, weight, change = ramp(full, first, t, span, steps)
        assert 1 <= weight <= full and 1 <= step <= steps
        assert weight >= previous
        previous = weight
        if change is not None:
            assert change > t and ramp(full, first, change, span, steps)[1] > weight
    assert ramp(full, first, first, span, steps)[1] == max(1, full // steps)
    assert ramp(full, first, first + span, span, steps)[1] == full
    assert ramp_step_start(first, span, steps, steps) == first + span


@settings(max_examples=60, deadline=None)
@given(st.data(), nows)
def test_history_records_what_it_saw(data: st.DataObject, now: float) -> None:
    upstream = data.draw(upstreams(policy=TrafficPolicy(slow_start=30, drain_as_backup=True)))
    before = {"web": data.draw(histories(upstream, now - 1))}
    after = advance_history(before, {"web": upstream, "api": Upstream("api", FALLBACK)}, now)
    assert set(after) == {"web"}  # api reads no times: not tracked
    times = after["web"]
    assert set(times) == {s.address for s in upstream.servers}
    for server in upstream.servers:
        seen, was = times[server.address], before["web"].get(server.address)
        assert seen.first_seen in (0.0, now) if was is None else seen.first_seen == was.first_seen
        assert (seen.draining_since is not None) == server.draining
        if server.draining and was is not None and was.draining_since is not None:
            assert seen.draining_since == was.draining_since


@settings(max_examples=50, deadline=None)
@given(cases(), st.lists(st.floats(-100, 1e5), min_size=1, max_size=8))
def test_memo_gives_what_for_proxy_gives(case: Case, offsets: list[float]) -> None:
    memo = DecisionMemo(case.proxy)
    for offset in offsets:  # mostly forward in time, sometimes back
        now = case.now + offset
        got = memo.decide(case.upstream, now, case.times, held_empty=case.held_empty)
        assert got.upstream.body == case.at(now).upstream.body
