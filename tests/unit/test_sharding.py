"""syncer/sharding.py: where proxies go (rendezvous hashing) and the balancing decision,
as properties over random labels, shard counts and fleets of replicas, and as tables."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.sharding import (
    MAX_SHARDS,
    Moves,
    assign,
    fair_share,
    member_lease_name,
    preference,
    quotas,
    rebalance,
    shard_lease_name,
    shard_of,
)

labels = st.text(min_size=1, max_size=40)
label_sets = st.sets(labels, max_size=60)
shard_counts = st.integers(1, MAX_SHARDS)


# --- assignment --------------------------------------------------------------------------


@given(labels, shard_counts)
def test_a_proxy_has_one_shard_in_range_and_always_the_same(label: str, shards: int) -> None:
    shard = shard_of(label, shards)
    assert 0 <= shard < shards
    assert shard_of(label, shards) == shard
    assert preference(label, shards)[0] == shard
    assert sorted(preference(label, shards)) == list(range(shards))


@given(label_sets, label_sets, st.integers(1, 32))
def test_proxies_coming_and_going_never_move_the_others(
    before: set[str], others: set[str], shards: int
) -> None:
    alone = assign(before, shards)
    together = assign(before | others, shards)
    assert {k: together[k] for k in before} == alone


@given(label_sets, st.integers(1, 63))
def test_one_more_shard_only_takes_proxies_for_itself(keys: set[str], shards: int) -> None:
    """Rendezvous hashing: growing from N to N+1 shards moves a proxy only to the new one."""
    for key in keys:
        assert shard_of(key, shards + 1) in (shard_of(key, shards), shards)


@settings(max_examples=20, deadline=None)
@given(st.text(max_size=10), st.integers(2, 16))
def test_shards_are_roughly_balanced(prefix: str, shards: int) -> None:
    keys = [f"{prefix}nginx-{i}" for i in range(200 * shards)]
    counts = Counter(assign(keys, shards).values())
    assert len(counts) == shards
    # 200 expected per shard (binomial, sd < 15): 120..280 is over five sd each way.
    assert all(120 <= n <= 280 for n in counts.values()), counts


def test_the_hash_is_the_same_in_every_process() -> None:
    """Python's own hash() is salted per process: two replicas would disagree."""
    code = "from syncer.sharding import assign; print(sorted(assign(['a','nginx-0','p1','é'], 7).items()))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str(sorted(assign(["a", "nginx-0", "p1", "é"], 7).items()))


def test_lease_names() -> None:
    assert shard_lease_name("dyups-syncer", 3) == "dyups-syncer-3"
    name = member_lease_name("dyups-syncer", "nginx-7d9f_1a2b3c4d")
    assert name.startswith("dyups-syncer-member-") and len(name) == len("dyups-syncer-member-") + 10
    assert member_lease_name("dyups-syncer", "nginx-7d9f_1a2b3c4d") == name
    assert member_lease_name("dyups-syncer", "other") != name


# --- quotas and moves: tables --------------------------------------------------------------


@pytest.mark.parametrize(
    ("shards", "held", "want"),
    [
        (4, {"a": 0, "b": 0}, {"a": 2, "b": 2}),
        (4, {"a": 2, "b": 2, "c": 0}, {"a": 2, "b": 1, "c": 1}),  # the first of the tie keeps 2
        (4, {"a": 1, "b": 2, "c": 1}, {"a": 1, "b": 2, "c": 1}),  # whoever holds 2 keeps them
        (3, {"a": 0, "b": 0, "c": 0, "d": 0}, {"a": 1, "b": 1, "c": 1, "d": 0}),
        (3, {"a": 0, "b": 0, "c": 0, "d": 1}, {"a": 1, "b": 1, "c": 0, "d": 1}),
        (1, {"a": 0}, {"a": 1}),
        (5, {}, {}),
    ],
)
def test_quotas(shards: int, held: dict[str, int], want: dict[str, int]) -> None:
    assert quotas(shards, held) == want
    if held:
        assert sum(want.values()) == shards


@pytest.mark.parametrize(
    ("shards", "members", "fair"), [(4, 2, 2), (4, 3, 2), (4, 4, 1), (4, 8, 1)]
)
def test_fair_share_is_the_ceiling(shards: int, members: int, fair: int) -> None:
    assert fair_share(shards, members) == fair
    assert max(quotas(shards, {str(m): 0 for m in range(members)}).values()) == fair


def test_a_lone_replica_takes_every_free_shard_in_its_own_order() -> None:
    moves = rebalance(me="a", shards=4, members=[], holders={}, mine=())
    assert moves == Moves(acquire=preference("a", 4), quota=4)


def test_a_new_member_gets_a_shard_from_the_one_holding_one_too_many() -> None:
    holders = {0: "a", 1: "a", 2: "b", 3: "b"}
    a = rebalance(me="a", shards=4, members=["a", "b", "c"], holders=holders, mine=(0, 1))
    b = rebalance(me="b", shards=4, members=["a", "b", "c"], holders=holders, mine=(2, 3))
    c = rebalance(me="c", shards=4, members=["a", "b", "c"], holders=holders, mine=())
    assert a == Moves(quota=2)
    assert b.release == (next(s for s in reversed(preference("b", 4)) if s in (2, 3)),)
    assert c == Moves(quota=1)  # nothing free yet: it waits for b's release
    freed = {s: h for s, h in holders.items() if s not in b.release}
    c = rebalance(me="c", shards=4, members=["a", "b", "c"], holders=freed, mine=())
    assert c.acquire == b.release


def test_a_shard_of_a_holder_that_is_not_a_member_is_not_free() -> None:
    """A replica whose membership has lapsed may still hold a shard's unexpired Lease:
    it is not counted, and not taken, until the Lease itself expires."""
    moves = rebalance(me="a", shards=2, members=["a"], holders={0: "ghost"}, mine=())
    assert moves == Moves(acquire=(1,), quota=2)


def test_a_lease_still_naming_me_that_i_do_not_hold_is_mine_to_take_again() -> None:
    moves = rebalance(me="a", shards=2, members=["a", "b"], holders={0: "a", 1: "b"}, mine=())
    assert moves == Moves(acquire=(0,), quota=1)


# --- balancing: the fleet converges --------------------------------------------------------


def settle(
    shards: int, members: list[str], holders: dict[int, str], rng: random.Random
) -> tuple[dict[int, str], int]:
    """Rounds of every member deciding on the same view, in a random order each round,
    releases freeing a shard at once and acquisitions taking only free ones, until a
    round changes nothing. Returns the holders and how many shard hand-overs it took."""
    moved = 0
    for _ in range(4 * shards + 8):
        changed = False
        for me in rng.sample(members, len(members)):
            mine = {s for s, h in holders.items() if h == me}
            others = {s: h for s, h in holders.items() if h != me}
            moves = rebalance(me=me, shards=shards, members=members, holders=others, mine=mine)
            for s in moves.release:
                del holders[s]
                changed = True
            for s in moves.acquire:
                if s not in holders:
                    holders[s] = me
                    moved += 1
                    changed = True
        if not changed:
            return holders, moved
    raise AssertionError(f"no fixed point: {holders}")


def balanced(shards: int, members: list[str], holders: dict[int, str]) -> bool:
    counts = Counter(holders.values())
    low, high = shards // len(members), fair_share(shards, len(members))
    return len(holders) == shards and all(low <= counts[m] <= high for m in members)


fleets = st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=1, max_size=9, unique=True)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 24), fleets, st.randoms(use_true_random=False), st.data())
def test_any_fleet_settles_balanced(
    shards: int, members: list[str], rng: random.Random, data: st.DataObject
) -> None:
    """From any holding (a crash, a partition healed, replicas added), every shard ends
    held and each live replica holds floor or ceil of shards / members."""
    start = data.draw(
        st.dictionaries(st.integers(0, shards - 1), st.sampled_from([*members, "gone"]))
    )
    holders = {s: h for s, h in start.items() if h != "gone"}  # a dead holder's Lease expired
    holders, _ = settle(shards, members, holders, rng)
    assert balanced(shards, members, holders), holders


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 24), fleets, st.randoms(use_true_random=False))
def test_a_balanced_fleet_moves_nothing(
    shards: int, members: list[str], rng: random.Random
) -> None:
    holders, _ = settle(shards, members, {}, rng)
    again, moved = settle(shards, members, dict(holders), rng)
    assert again == holders and moved == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 24), fleets, st.text("xyz", min_size=1, max_size=3), st.randoms())
def test_a_new_replica_takes_only_what_it_needs(
    shards: int, members: list[str], newcomer: str, rng: random.Random
) -> None:
    """Adding a replica moves the shards it ends up holding and nothing else."""
    holders, _ = settle(shards, members, {}, rng)
    after, moved = settle(shards, [*members, newcomer], dict(holders), rng)
    assert balanced(shards, [*members, newcomer], after)
    changed = [s for s in range(shards) if holders[s] != after[s]]
    assert all(after[s] == newcomer for s in changed)
    assert moved == len(changed) == Counter(after.values())[newcomer]
