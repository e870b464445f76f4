"""Traffic policies, one table per policy (properties: test_traffic_props.py)."""

import json

import pytest

from syncer.model import (
    DEFAULT_TRAFFIC,
    MAX_WEIGHT,
    Directive,
    EmptyPolicy,
    ModelError,
    Server,
    TrafficPolicy,
    Upstream,
)
from syncer.traffic import (
    DecisionMemo,
    EndpointTimes,
    ProxyTraits,
    advance_history,
    for_proxy,
    next_change,
    ramp,
    topology_changed,
)

NOW = 1_000.0
OLD = EndpointTimes(0.0)


def srv(last: int, zone: str = "", **kw) -> Server:
    return Server(f"10.0.0.{last}", 80, zone=zone, **kw)


def up(*servers: Server, balancer: str = "", **policy) -> Upstream:
    directives = (Directive(balancer),) if balancer else ()
    return Upstream("web", servers, directives, TrafficPolicy(**policy))


def decide(upstream, zone="", times=None, now=NOW, held_empty=False):
    if times is None:
        times = {s.address: OLD for s in upstream.servers}
    return for_proxy(upstream, ProxyTraits(zone), now, times, held_empty=held_empty)


def roles(decision) -> dict[str, str]:
    servers = decision.explain["servers"]
    return {
        addr.removeprefix("10.0.0.").removesuffix(":80"): s["role"] for addr, s in servers.items()
    }


def body(decision) -> str:
    return decision.upstream.body.replace("10.0.0.", "").replace(":80", "")


# ---------------------------------------------------------------- model additions


def test_policy_and_draining_are_never_rendered_but_are_part_of_equality():
    plain = Upstream("web", (srv(1), srv(2)))
    other = Upstream("web", (srv(1), srv(2, draining=True)), traffic=TrafficPolicy(zone_aware=True))
    assert other.body == plain.body and other.digest == plain.digest
    assert other != plain
    assert Upstream("web", (srv(1), srv(2)), traffic=TrafficPolicy(zone_aware=True)) != plain
    assert other.has_draining and not plain.has_draining
    # zone and hints are metadata: not part of equality
    assert srv(1, zone="a", for_zones=("a",)) == srv(1)


def test_an_upstream_needs_a_server_that_is_neither_backup_nor_draining():
    with pytest.raises(ModelError, match="neither backup nor draining"):
        Upstream("web", (srv(1, draining=True), srv(2, backup=True)))
    with pytest.raises(ModelError, match="only backup"):
        Upstream("web", (srv(1, backup=True),))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"for_zones": ("a b",)}, "for_zones"),
        ({"for_zones": ("",)}, "for_zones"),
        ({"for_zones": "a"}, "for_zones"),
        ({"draining": 1}, "draining"),
    ],
)
def test_bad_server_metadata(kwargs, field):
    with pytest.raises(ModelError, match=field):
        srv(1, **kwargs)


def test_adjusted_copies_metadata_checks_changes_and_ends_the_drain():
    s = srv(1, zone="a", for_zones=("a",), node="n1", draining=True, weight=3)
    out = s.adjusted(backup=True)
    assert out == srv(1, weight=3, backup=True)
    assert (out.zone, out.for_zones, out.node, out.draining) == ("a", ("a",), "n1", False)
    assert s.adjusted(weight=MAX_WEIGHT).weight == MAX_WEIGHT
    for bad in ({"weight": 0}, {"weight": MAX_WEIGHT + 1}, {"backup": 1}, {"down": "yes"}):
        with pytest.raises(ModelError):
            s.adjusted(**bad)


def test_for_zones_is_a_tuple_without_duplicates():
    assert srv(1, for_zones=["a", "b", "a"]).for_zones == ("a", "b")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"zone_aware": "yes"}, "zone_aware"),
        ({"min_local": 0}, "min_local"),
        ({"min_local": True}, "min_local"),
        ({"min_local_fraction": 1.5}, "min_local_fraction"),
        ({"min_local_fraction": float("nan")}, "min_local_fraction"),
        ({"local_weight_multiplier": 0}, "local_weight_multiplier"),
        ({"slow_start": -1}, "slow_start"),
        ({"slow_start": float("inf")}, "slow_start"),
        ({"slow_start": "30s"}, "slow_start"),
        ({"slow_start_steps": 1}, "slow_start_steps"),
        ({"slow_start_steps": 101}, "slow_start_steps"),
        ({"empty": "delete"}, "empty"),
        ({"empty": "fallback"}, "fallback"),
        ({"fallback": (srv(9),)}, "fallback"),
        ({"empty": "fallback", "fallback": (srv(9, backup=True),)}, "fallback"),
        ({"empty": "fallback", "fallback": (srv(9), srv(9))}, "fallback"),
        ({"empty": "fallback", "fallback": ("10.0.0.9:80",)}, "fallback"),
        ({"drain_seconds": -0.5}, "drain_seconds"),
        ({"drain_as_backup": None}, "drain_as_backup"),
    ],
)
def test_bad_policies_name_the_field(kwargs, field):
    with pytest.raises(ModelError, match=field):
        TrafficPolicy(**kwargs)


def test_policy_values_are_canonical():
    policy = TrafficPolicy(empty="fallback", fallback=[srv(9), srv(8)], slow_start=30)
    assert policy.empty is EmptyPolicy.FALLBACK
    assert policy.fallback == (srv(8), srv(9))
    assert policy.slow_start == 30.0 and isinstance(policy.slow_start, float)
    assert policy == TrafficPolicy(
        empty=EmptyPolicy.FALLBACK, fallback=(srv(8), srv(9)), slow_start=30.0
    )
    assert TrafficPolicy() == DEFAULT_TRAFFIC


def test_proxy_zone_is_a_label_value():
    with pytest.raises(ModelError, match="zone"):
        ProxyTraits("eu 1")


# ---------------------------------------------------------------- default path


@pytest.mark.parametrize("zone", ["", "a"])
@pytest.mark.parametrize("held_empty", [False, True])
def test_default_policy_returns_the_input_object(zone, held_empty):
    u = Upstream("web", (srv(1, zone="a"), srv(2, zone="b", backup=True), srv(3, down=True)))
    d = for_proxy(u, ProxyTraits(zone), NOW, None, held_empty=held_empty)
    assert d.upstream is u and d.next_change_at is None
    assert roles(d) == {"1": "primary", "2": "backup", "3": "down"}
    json.dumps(d.explain)


def test_a_policy_that_cannot_apply_returns_the_input_object():
    u = up(srv(1, zone="a"), srv(2, zone="b"), zone_aware=True, empty="down")
    d = decide(u, zone="")
    assert d.upstream is u
    assert d.explain["policies"] == ["zone: the proxy's zone is unknown: all primary"]


# ---------------------------------------------------------------- empty


def test_empty_keep_keeps_the_last_known_servers():
    u = up(srv(1, zone="a"), srv(2, zone="a"), srv(3, zone="b"), zone_aware=True)
    d = decide(u, zone="a", held_empty=True)
    assert body(d) == "server 1; server 2; server 3 backup;"  # the other policies still apply
    assert "no endpoint" in d.explain["policies"][0]


def test_empty_fallback_replaces_the_servers():
    u = up(srv(1), srv(2), empty="fallback", fallback=(srv(9, weight=2),), zone_aware=True)
    d = decide(u, zone="a", held_empty=True)
    assert body(d) == "server 9 weight=2;"
    assert roles(d) == {"1": "dropped", "2": "dropped", "9": "fallback"}
    assert decide(u, zone="a").upstream is u  # only while the service is empty


def test_empty_down_marks_every_server_down():
    u = up(srv(1), srv(2, draining=True), srv(3, backup=True), empty="down")
    d = decide(u, held_empty=True)
    assert body(d) == "server 1 down; server 2 down; server 3 backup down;"
    assert set(roles(d).values()) == {"down"}
    assert not any(s.draining for s in d.upstream.servers)


# ---------------------------------------------------------------- drain


def test_draining_servers_leave_at_once_by_default():
    d = decide(up(srv(1), srv(2, draining=True)))
    assert body(d) == "server 1;"
    assert roles(d) == {"1": "primary", "2": "dropped"}
    assert d.next_change_at is None


@pytest.mark.parametrize(
    "since, now, expected, role, next_change",
    [
        (NOW, NOW, "server 1; server 2 backup;", "draining-backup", NOW + 30),
        (NOW - 29.5, NOW, "server 1; server 2 backup;", "draining-backup", NOW + 0.5),
        (NOW - 30, NOW, "server 1;", "dropped", None),
        (None, NOW, "server 1;", "dropped", None),  # no record of when it began
    ],
)
def test_drain_as_backup_keeps_a_draining_server_as_backup_for_drain_seconds(
    since, now, expected, role, next_change
):
    u = up(srv(1), srv(2, draining=True), drain_as_backup=True)
    times = {srv(1).address: OLD, srv(2).address: EndpointTimes(0.0, since)}
    d = decide(u, times=times, now=now)
    assert body(d) == expected
    assert roles(d)["2"] == role
    assert d.next_change_at == next_change


@pytest.mark.parametrize("balancer", ["ip_hash", "random"])
def test_no_backup_balancers_drop_draining_servers(balancer):
    u = up(srv(1), srv(2, draining=True), balancer=balancer, drain_as_backup=True)
    d = decide(u, times={srv(2).address: EndpointTimes(0.0, NOW)})
    assert body(d) == f"server 1; {balancer};"
    assert balancer in d.explain["servers"]["10.0.0.2:80"]["reason"]


# ---------------------------------------------------------------- zone

A, B, C = "eu-1", "eu-2", "eu-3"


@pytest.mark.parametrize(
    "zones, proxy, policy, expected, why",
    [
        # two local ready endpoints out of four: cross-zone ones become backup
        (
            [A, A, B, B],
            A,
            {},
            "server 1; server 2; server 3 backup; server 4 backup;",
            "local has 2 ≥ min_local 2",
        ),
        # one local endpoint: below min_local, everything primary
        (
            [A, B, B, C],
            A,
            {},
            "server 1; server 2; server 3; server 4;",
            "local has 1 < min_local 2",
        ),
        (
            [A, B, B, C],
            A,
            {"min_local": 1},
            "server 1; server 2 backup; server 3 backup; server 4 backup;",
            "local has 1 ≥ min_local 1",
        ),
        # two of eleven local: below the 0.2 fraction
        ([A, A, *[B] * 9], A, {}, None, "local has 2 of 11 < min_local_fraction 0.2"),
        # no local endpoint at all
        (
            [B, B, C],
            A,
            {"min_local": 1},
            "server 1; server 2; server 3;",
            "local has 0 < min_local 1",
        ),
        # nothing to split
        ([A, A], A, {}, "server 1; server 2;", "every endpoint is local"),
        # no zone known anywhere; the proxy has none
        (["", "", ""], A, {}, "server 1; server 2; server 3;", "no endpoint's zone is known"),
        ([A, A, B], "", {}, "server 1; server 2; server 3;", "the proxy's zone is unknown"),
        # an endpoint of unknown zone is not local
        ([A, A, ""], A, {}, "server 1; server 2; server 3 backup;", "local has 2 ≥ min_local 2"),
    ],
)
def test_zone_aware_routing(zones, proxy, policy, expected, why):
    u = up(*(srv(i + 1, zone=z) for i, z in enumerate(zones)), zone_aware=True, **policy)
    d = decide(u, zone=proxy)
    if expected is not None:
        assert body(d) == expected
    else:
        assert "backup" not in d.upstream.body
    assert why in " ".join(d.explain["policies"])


def test_zone_reasons_per_server():
    u = up(srv(1, zone=A), srv(2, zone=A), srv(3, zone=B), zone_aware=True)
    servers = decide(u, zone=A).explain["servers"]
    assert servers["10.0.0.1:80"] == {"role": "primary", "reason": f"local zone {A}", "weight": 1}
    assert servers["10.0.0.3:80"]["reason"] == f"cross-zone (zone {B}): local has 2 ≥ min_local 2"
    fallback = decide(up(srv(1, zone=A), srv(2, zone=B), zone_aware=True), zone=A)
    assert (
        fallback.explain["servers"]["10.0.0.1:80"]["reason"]
        == "zone fallback: local has 1 < min_local 2"
    )


def test_hints_decide_when_every_endpoint_has_them():
    u = up(
        srv(1, zone=A, for_zones=(B,)),
        srv(2, zone=B, for_zones=(A,)),
        srv(3, zone=B, for_zones=(A, C)),
        srv(4, zone=C, for_zones=(C,)),
        zone_aware=True,
    )
    d = decide(u, zone=A)
    assert body(d) == "server 1 backup; server 2; server 3; server 4 backup;"
    assert d.explain["servers"]["10.0.0.2:80"]["reason"] == f"hinted for zone {A}"


def test_hints_are_ignored_unless_every_endpoint_has_them():
    u = up(
        srv(1, zone=A, for_zones=(B,)),
        srv(2, zone=A),
        srv(3, zone=B, for_zones=(A,)),
        zone_aware=True,
    )
    assert body(decide(u, zone=A)) == "server 1; server 2; server 3 backup;"


def test_hints_for_no_endpoint_of_the_zone_fall_back_to_all():
    u = up(srv(1, for_zones=(B,)), srv(2, for_zones=(B,)), zone_aware=True, min_local=1)
    assert body(decide(u, zone=A)) == "server 1; server 2;"


def test_draining_and_source_backup_servers_are_not_zone_candidates():
    u = up(
        srv(1, zone=A),
        srv(2, zone=A, draining=True),
        srv(3, zone=A, backup=True),
        srv(4, zone=B),
        zone_aware=True,
    )
    # only one local candidate (1): below min_local, so 4 stays primary
    assert body(decide(u, zone=A)) == "server 1; server 3 backup; server 4;"


@pytest.mark.parametrize("balancer", ["ip_hash", "random"])
def test_no_backup_balancers_weight_local_servers_instead(balancer):
    u = up(
        srv(1, zone=A, weight=3),
        srv(2, zone=A, weight=MAX_WEIGHT // 2),
        srv(3, zone=B, weight=3),
        balancer=balancer,
        zone_aware=True,
    )
    d = decide(u, zone=A)
    assert (
        body(d)
        == f"server 1 weight=30; server 2 weight={MAX_WEIGHT}; server 3 weight=3; {balancer};"
    )
    assert "backup" not in d.upstream.body


def test_least_conn_can_use_backup_servers():
    u = up(srv(1, zone=A), srv(2, zone=A), srv(3, zone=B), balancer="least_conn", zone_aware=True)
    assert body(decide(u, zone=A)) == "server 1; server 2; server 3 backup; least_conn;"


def test_down_servers_are_left_alone_and_not_counted():
    u = up(srv(1, zone=A), srv(2, zone=A, down=True), srv(3, zone=B), zone_aware=True)
    assert body(decide(u, zone=A)) == "server 1; server 2 down; server 3;"


# ---------------------------------------------------------------- slow start


@pytest.mark.parametrize(
    "elapsed, weight, step, next_in",
    [
        (0, 3, 1, 15),
        (14.9, 3, 1, 0.1),
        (15, 6, 2, 15),
        (29.99, 6, 2, 0.01),
        (30, 10, None, None),
        (1e6, 10, None, None),
        (-5, 3, 1, 20),  # first seen "in the future" (clock step back): the entry weight
    ],
)
def test_slow_start_ramps_in_steps(elapsed, weight, step, next_in):
    first = NOW - elapsed
    u = up(srv(1), srv(2, weight=10), slow_start=30)
    d = decide(u, times={srv(1).address: OLD, srv(2).address: EndpointTimes(first)})
    assert d.upstream.servers[1].weight == weight
    info = d.explain["servers"]["10.0.0.2:80"]
    if step is None:
        assert info["role"] == "primary" and d.next_change_at is None
    else:
        assert info["role"] == "ramping" and f"step {step} of 3" in info["reason"]
        assert d.next_change_at == pytest.approx(NOW + next_in)


def test_ramp_function():
    assert ramp(10, 0.0, 0.0, 30.0, 3) == (1, 3, 15.0)
    assert ramp(2, 0.0, 0.0, 30.0, 3) == (1, 1, 30.0)  # 2·2//3 is still 1: skip to the end
    assert ramp(1, 0.0, 0.0, 30.0, 3) == (1, 1, None)
    assert ramp(100, 0.0, 12.0, 30.0, 4) == (2, 50, 20.0)


def test_slow_start_skips_unknown_down_and_draining_servers():
    u = up(
        srv(1),
        srv(2, weight=9, down=True),
        srv(3, weight=9),
        srv(4, weight=9, draining=True),
        slow_start=30,
        drain_as_backup=True,
    )
    times = {
        srv(1).address: OLD,
        srv(2).address: EndpointTimes(NOW),
        srv(4).address: EndpointTimes(NOW, NOW),  # draining: backup, not ramped
    }  # 3 is missing from the history: not ramped
    d = decide(u, times=times)
    assert (
        body(d) == "server 1; server 2 weight=9 down; server 3 weight=9; server 4 weight=9 backup;"
    )
    assert d.next_change_at == NOW + 30  # the drain's end


def test_slow_start_ramps_the_zone_weighted_weight():
    u = up(
        srv(1, zone=A),
        srv(2, zone=A),
        srv(3, zone=B),
        balancer="ip_hash",
        zone_aware=True,
        slow_start=30,
    )
    times = {srv(1).address: OLD, srv(2).address: EndpointTimes(NOW), srv(3).address: OLD}
    assert (
        body(decide(u, zone=A, times=times))
        == "server 1 weight=10; server 2 weight=3; server 3; ip_hash;"
    )


def test_ramping_backup_keeps_its_role():
    u = up(srv(1, zone=A), srv(2, zone=A), srv(3, zone=B, weight=6), zone_aware=True, slow_start=30)
    times = {srv(1).address: OLD, srv(2).address: OLD, srv(3).address: EndpointTimes(NOW)}
    d = decide(u, zone=A, times=times)
    assert body(d) == "server 1; server 2; server 3 weight=2 backup;"
    assert (
        roles(d)["3"] == "backup" and "slow start" in d.explain["servers"]["10.0.0.3:80"]["reason"]
    )


def test_all_policies_together_in_order():
    """empty: keep → drain → zone → slow start."""
    u = up(
        srv(1, zone=A, weight=4),
        srv(2, zone=A, weight=4),
        srv(3, zone=A, weight=4, draining=True),
        srv(4, zone=B, weight=4),
        zone_aware=True,
        slow_start=30,
        drain_as_backup=True,
    )
    times = {
        srv(1).address: OLD,
        srv(2).address: EndpointTimes(NOW - 20),
        srv(3).address: EndpointTimes(0.0, NOW - 10),
        srv(4).address: OLD,
    }
    d = decide(u, zone=A, times=times, held_empty=True)
    assert body(d) == (
        "server 1 weight=4; server 2 weight=2; server 3 weight=4 backup; server 4 weight=4 backup;"
    )
    assert roles(d) == {"1": "primary", "2": "ramping", "3": "draining-backup", "4": "backup"}
    assert d.next_change_at == NOW + 10  # the ramp's last step; the drain ends at NOW + 20
    json.dumps(d.explain)


# ---------------------------------------------------------------- history


def test_history_first_appearance_and_restored_servers_never_ramp():
    u = up(srv(1), srv(2), slow_start=30)
    history = advance_history({}, {"web": u}, NOW)
    assert history == {"web": {srv(1).address: OLD, srv(2).address: OLD}}
    restored = advance_history(
        {}, {"web": up(srv(1), srv(3), slow_start=30)}, NOW, known={"web": u}
    )
    assert restored["web"] == {srv(1).address: OLD, srv(3).address: EndpointTimes(NOW)}


def test_history_new_address_ramps_unless_everything_is_new():
    history = advance_history({}, {"web": up(srv(1), slow_start=30)}, NOW)
    added = advance_history(history, {"web": up(srv(1), srv(2), slow_start=30)}, NOW + 5)
    assert added["web"][srv(2).address] == EndpointTimes(NOW + 5)
    assert added["web"][srv(1).address] == OLD
    replaced = advance_history(added, {"web": up(srv(3), srv(4), slow_start=30)}, NOW + 9)
    assert replaced["web"] == {srv(3).address: OLD, srv(4).address: OLD}


def test_history_tracks_draining():
    def at(now, *servers, history):
        return advance_history(history, {"web": up(*servers, drain_as_backup=True)}, now)

    h = at(NOW, srv(1), srv(2), history={})
    h = at(NOW + 1, srv(1), srv(2, draining=True), history=h)
    assert h["web"][srv(2).address] == EndpointTimes(0.0, NOW + 1)
    h = at(NOW + 2, srv(1), srv(2, draining=True), history=h)
    assert h["web"][srv(2).address].draining_since == NOW + 1  # from when first seen draining
    h = at(NOW + 3, srv(1), srv(2), history=h)
    assert h["web"][srv(2).address] == OLD
    h = at(NOW + 4, srv(1), history=h)
    assert srv(2).address not in h["web"]


def test_history_keeps_only_what_policies_read():
    h = advance_history({}, {"web": up(srv(1), slow_start=30), "api": up(srv(2))}, NOW)
    assert set(h) == {"web"}
    again = advance_history(h, {"web": up(srv(1), slow_start=30)}, NOW + 1)
    assert again["web"] is h["web"]  # unchanged entries are kept as they were
    assert advance_history(h, {}, NOW + 2) == {}


# ---------------------------------------------------------------- memo


def test_memo_reuses_a_decision_while_it_holds():
    u = up(srv(1, zone=A), srv(2, zone=A), srv(3, zone=B, weight=9), zone_aware=True, slow_start=30)
    times = {srv(1).address: OLD, srv(2).address: OLD, srv(3).address: EndpointTimes(NOW)}
    memo = DecisionMemo(ProxyTraits(A))
    first = memo.decide(u, NOW, times, held_empty=False)
    assert first.next_change_at == NOW + 15
    assert memo.decide(u, NOW + 14, times, held_empty=False) is first
    assert memo.decide(u, NOW + 15, times, held_empty=False) is not first  # the next step
    assert memo.decide(u, NOW + 1, times, held_empty=False).at == NOW + 1  # clock went back
    again = memo.decide(u, NOW + 2, times, held_empty=False)
    assert memo.decide(u, NOW + 2, dict(times), held_empty=False) is not again  # new history
    assert memo.decide(u, NOW + 2, times, held_empty=True) is not again


def test_memo_decide_all_forgets_upstreams_no_longer_desired():
    web = up(srv(1, zone=A), srv(2, zone=B), zone_aware=True, min_local=1)
    memo = DecisionMemo(ProxyTraits(A))
    decisions = memo.decide_all({"web": web}, NOW, {})
    assert body(decisions["web"]) == "server 1; server 2 backup;"
    assert memo.decide_all({"web": web}, NOW + 1, {})["web"] is decisions["web"]
    memo.decide_all({}, NOW + 2, {})
    assert memo.decide_all({"web": web}, NOW + 3, {})["web"] is not decisions["web"]


def test_next_change_is_the_earliest():
    plain = Upstream("web", (srv(1),))
    ramping = up(srv(1), srv(2, weight=3), slow_start=30)
    times = {srv(1).address: OLD, srv(2).address: EndpointTimes(NOW - 20)}
    decisions = [decide(plain), decide(ramping, times=times)]
    assert next_change(decisions) == NOW + 10
    assert next_change([decide(plain)]) is None


def test_topology_changes_are_changes_for_zone_aware_upstreams_only():
    before = up(srv(1, zone=A, for_zones=(A,)), srv(2, zone=B, for_zones=(B,)), zone_aware=True)
    hints = up(srv(1, zone=A, for_zones=(A,)), srv(2, zone=B, for_zones=(A,)), zone_aware=True)
    assert hints == before  # equality ignores zones and hints (the proxy cannot show them)
    assert topology_changed(before, hints)
    assert not topology_changed(before, before)
    assert not topology_changed(None, hints)
    assert not topology_changed(
        Upstream("web", (srv(1, zone=A),)), Upstream("web", (srv(1, zone=B),))
    )


def test_a_policy_error_names_the_key_at_fault_not_the_first_given():
    import pytest

    from syncer.model import TrafficPolicy
    from syncer.traffic import PolicyFieldError, policy_from_fields

    with pytest.raises(PolicyFieldError) as caught:
        policy_from_fields({"zone-aware": "true", "min-local": "0"}, TrafficPolicy())
    assert caught.value.key == "min-local"
    with pytest.raises(PolicyFieldError) as caught:
        policy_from_fields(
            {"empty": "fallback", "fallback": "127.0.0.1:81", "slow-start-steps": "1"},
            TrafficPolicy(),
        )
    assert caught.value.key == "slow-start-steps"
    ok = policy_from_fields({"empty": "fallback", "fallback": "127.0.0.1:81"}, TrafficPolicy())
    assert ok.fallback[0].address == "127.0.0.1:81"
