"""Planner: tables for the rules, properties for idempotence, ownership and the breaker."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncer.model import Directive, ObservedUpstream, Server, Upstream
from syncer.plan import (
    Mode,
    Ownership,
    PlanPolicy,
    apply_to_observed,
    body_hash,
    drift_reason,
    plan,
)


def up(name, *ips, directives=()):
    return Upstream(
        name, tuple(Server(ip, 80) for ip in ips), tuple(Directive.parse(d) for d in directives)
    )


def seen(u: Upstream, head=False):
    return ObservedUpstream(u.name, u.servers, u.render() if head else None)


SYNC = PlanPolicy()


def test_creates_missing_and_claims_them():
    p = plan({"a": up("a", "10.0.0.1")}, {}, Ownership(), SYNC)
    assert [u.name for u in p.upserts] == ["a"] and p.claims == ("a",)
    assert p.upserts[0].reason == "missing"


def test_no_post_when_proxy_already_holds_it():
    a = up("a", "10.0.0.1")
    p = plan({"a": a}, {"a": seen(a)}, Ownership(frozenset({"a"})), SYNC)
    assert p.empty


def test_changed_servers_are_posted():
    p = plan(
        {"a": up("a", "10.0.0.1", "10.0.0.2")},
        {"a": seen(up("a", "10.0.0.1"))},
        Ownership(frozenset({"a"})),
        SYNC,
    )
    assert [(u.name, u.reason) for u in p.upserts] == [("a", "changed")]


def test_not_owned_desired_name_is_a_conflict_not_a_write():
    static = up("static_be", "127.0.0.1")
    p = plan(
        {"static_be": up("static_be", "10.0.0.9")}, {"static_be": seen(static)}, Ownership(), SYNC
    )
    assert p.conflicts == ("static_be",) and p.empty


@pytest.mark.parametrize(
    "ownership",
    [Ownership(prefix="svc-"), Ownership(adopt=frozenset({"svc-a"}))],
)
def test_prefix_and_adopt_make_names_ours(ownership):
    p = plan(
        {"svc-a": up("svc-a", "10.0.0.2")},
        {"svc-a": seen(up("svc-a", "10.0.0.1"))},
        ownership,
        SYNC,
    )
    assert [u.name for u in p.upserts] == ["svc-a"] and not p.conflicts


def test_only_owned_upstreams_are_deleted():
    observed = {n: seen(up(n, "10.0.0.1")) for n in ("static_be", "mine", "keep1", "keep2")}
    owned = Ownership(frozenset({"mine", "keep1", "keep2"}))
    p = plan(
        {"keep1": up("keep1", "10.0.0.1"), "keep2": up("keep2", "10.0.0.1")}, observed, owned, SYNC
    )
    assert [d.name for d in p.deletes] == ["mine"]


def test_upsert_only_never_deletes():
    observed = {"mine": seen(up("mine", "10.0.0.1"))}
    p = plan({}, observed, Ownership(frozenset({"mine"})), PlanPolicy(mode=Mode.UPSERT_ONLY))
    assert not p.deletes and not p.refused_deletes


def test_no_deletes_while_restoring_from_snapshot():
    observed = {"mine": seen(up("mine", "10.0.0.1"))}
    p = plan({}, observed, Ownership(frozenset({"mine"})), PlanPolicy(deletes_allowed=False))
    assert not p.deletes


@pytest.mark.parametrize(
    "owned, desired, refused",
    [
        (4, 2, False),  # 2/4 = 0.5: not more than the fraction
        (4, 1, True),  # 3/4
        (2, 0, True),  # 2/2
        (1, 0, False),  # a single delete is always allowed
        (10, 0, True),
    ],
)
def test_mass_delete_breaker(owned, desired, refused):
    names = [f"u{i}" for i in range(owned)]
    observed = {n: seen(up(n, "10.0.0.1")) for n in names}
    want = {n: up(n, "10.0.0.1") for n in names[:desired]}
    p = plan(want, observed, Ownership(frozenset(names)), SYNC)
    assert p.refused is refused
    assert (not p.deletes) is refused or owned == desired
    if refused:
        # upserts still go ahead while deletes are held back
        assert set(p.refused_deletes) == set(names[desired:])
        overridden = plan(
            want, observed, Ownership(frozenset(names)), PlanPolicy(override_breaker=True)
        )
        assert {d.name for d in overridden.deletes} == set(names[desired:])


def test_directives_are_invisible_on_classic_so_the_applied_record_decides():
    a = up("a", "10.0.0.1", directives=["least_conn"])
    observed = {"a": seen(a)}
    owned = Ownership(frozenset({"a"}))
    assert plan({"a": a}, observed, owned, SYNC).upserts[0].reason == "unverified"
    assert plan({"a": a}, observed, owned, SYNC, applied={"a": body_hash(a.render())}).empty
    b = up("a", "10.0.0.1", directives=["keepalive 8"])
    assert (
        plan({"a": b}, observed, owned, SYNC, applied={"a": body_hash(a.render())})
        .upserts[0]
        .reason
        == "changed"
    )


def test_head_compares_the_echoed_body():
    a = up("a", "10.0.0.1", directives=["least_conn"])
    assert drift_reason(a, seen(a, head=True), None) is None
    other = ObservedUpstream("a", a.servers, "server 10.0.0.1:80;")
    assert drift_reason(a, other, None) == "changed"


def test_hostname_servers_rely_on_the_applied_record():
    h = Upstream("h", (Server("backend.local", 80, allow_hostname=True),))
    resolved = ObservedUpstream("h", (Server("10.1.1.1", 80),))
    assert drift_reason(h, resolved, None) == "unverified"
    assert drift_reason(h, resolved, body_hash(h.render())) is None


def test_releases_forget_owned_names_gone_everywhere():
    p = plan({}, {}, Ownership(frozenset({"old"})), SYNC)
    assert p.releases == ("old",) and p.empty


# ---------------------------------------------------------------- properties
ips = st.sampled_from([f"10.0.0.{i}" for i in range(1, 6)])
name_st = st.sampled_from(["a", "b", "c", "d", "static_be"])
state_st = st.dictionaries(name_st, st.lists(ips, min_size=1, max_size=3, unique=True), max_size=5)


def mk(d):
    return {n: up(n, *v) for n, v in d.items()}


@given(state_st, state_st, st.frozensets(name_st), st.booleans(), st.sampled_from(list(Mode)))
def test_planning_is_idempotent(desired_raw, observed_raw, owned, head, mode):
    desired, observed = mk(desired_raw), {n: seen(u, head) for n, u in mk(observed_raw).items()}
    ownership = Ownership(owned)
    first = plan(desired, observed, ownership, PlanPolicy(mode=mode, max_delete_fraction=1.0))
    after = apply_to_observed(observed, first, head=head)
    ownership2 = Ownership(owned | set(first.claims))
    applied = {u.name: body_hash(u.body) for u in first.upserts}
    second = plan(
        desired, after, ownership2, PlanPolicy(mode=mode, max_delete_fraction=1.0), applied=applied
    )
    assert second.empty


@given(state_st, state_st, st.frozensets(name_st), st.floats(0, 1))
def test_never_touches_what_it_does_not_own(desired_raw, observed_raw, owned, fraction):
    desired, observed = mk(desired_raw), {n: seen(u) for n, u in mk(observed_raw).items()}
    p = plan(desired, observed, Ownership(owned), PlanPolicy(max_delete_fraction=fraction))
    for name in [d.name for d in p.deletes] + [u.name for u in p.upserts]:
        assert name in owned or name not in observed
    assert {d.name for d in p.deletes} <= owned
    owned_present = [n for n in observed if n in owned]
    if len(p.deletes) > 1:
        assert len(p.deletes) / len(owned_present) <= fraction


@given(state_st, state_st, st.frozensets(name_st))
def test_never_posts_what_the_proxy_already_holds(desired_raw, observed_raw, owned):
    desired, observed = mk(desired_raw), {n: seen(u) for n, u in mk(observed_raw).items()}
    p = plan(desired, observed, Ownership(owned), SYNC)
    for u in p.upserts:
        assert observed.get(u.name) is None or observed[u.name].servers != u.upstream.servers
