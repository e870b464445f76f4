"""`python -m bench.soak`: marker addresses come from a bounded pool, and the
classification still tells every change apart by its upstream and its time."""

from __future__ import annotations

import random

import pytest

from bench.soak import (
    Change,
    Churn,
    Markers,
    SoakOptions,
    _arguments,
    classify,
    index_events,
    marker,
    marker_of,
    marker_slot,
)
from syncer.testing.dyups import AppliedEvent

POOL = 1024


def body(slot: int) -> str:
    return f"server {marker(slot)};\nserver 10.0.0.1:8080;\n"


def post(at: float, name: str, slot: int, worker: int = 0) -> AppliedEvent:
    return AppliedEvent(at=at, worker=worker, op="post", name=name, body=body(slot))


def test_markers_stay_in_the_pool_and_read_back() -> None:
    slots = {marker_slot(i, POOL) for i in range(5 * POOL)}
    assert slots == set(range(POOL))
    assert all(marker_of(body(s)) == s for s in (0, 1, 255, 256, POOL - 1, 70_000))
    assert marker_slot(5 * POOL + 3, 0) == 5 * POOL + 3  # no pool: one address per change


def test_a_reused_marker_names_the_latest_change_of_its_upstream_before_the_event() -> None:
    # Changes 1 and 1 + POOL of upstream "a" take the same marker address.
    first, second = Change(1, "a", 10.0, False), Change(1 + POOL, "a", 20.0, False)
    other = Change(2 + POOL, "b", 21.0, False)  # another upstream's marker
    markers = Markers([first, second, other], POOL)
    assert markers.change_of("a", body(1), 15.0) == 1
    assert markers.change_of("a", body(1), 25.0) == 1 + POOL
    assert markers.change_of("a", body(1), 5.0) is None  # before any change made it
    assert markers.change_of("b", body(1), 25.0) is None  # not a marker "b" was given
    assert markers.change_of("a", "server 10.0.0.1:8080;", 25.0) is None

    events = index_events(
        [post(15.0, "a", 1), post(15.0, "a", 1, 1), post(25.0, "a", 1), post(22.0, "b", 2)],
        workers=2,
        markers=markers,
    )
    fates = classify([first, second, other], [events], [{"a", "b"}])
    assert (fates.applied, fates.superseded, fates.lost) == (3, 0, 0)
    assert sorted(round(lag, 3) for lag in fates.accept_lag) == [1.0, 5.0, 5.0]
    assert events.everywhere == {1: 15.0}  # only change 1 reached both workers


def test_a_change_whose_marker_never_came_back_is_lost_not_taken_for_an_older_one() -> None:
    first, second = Change(1, "a", 10.0, False), Change(1 + POOL, "a", 20.0, False)
    events = index_events([post(15.0, "a", 1)], workers=1, markers=Markers([first, second], POOL))
    fates = classify([first, second], [events], [{"a"}])
    assert (fates.applied, fates.lost) == (1, 1)
    assert fates.lost_examples == [f"p0 a (change {1 + POOL})"]


def test_the_churn_carries_each_change_s_marker_and_only_a_bounded_set_of_addresses() -> None:
    opts = SoakOptions(upstreams=20, servers=4, addresses=POOL)
    churn = Churn(opts, random.Random(3))
    addresses = {a for servers in churn.start().values() for a in servers}
    names = set(churn.spec)
    for _ in range(3 * POOL):
        made = churn.next_edit()
        churn.record(made, 0.0)
        for index, name, delete in made:
            names.add(name)
            if not delete:
                assert marker_of(churn.spec[name][0]) == index % POOL
                addresses.update(churn.spec[name])
    assert len(names) > 100  # names rotated: never reused, yet ...
    # ... addresses are: the markers' pool and the servers of the 20 starting slots.
    assert len(addresses) <= POOL + 20 * 4
    assert len({a for a in addresses if marker_of(a) is None}) == 20 * 4


@pytest.mark.parametrize("addresses", ["5", "-1", str(200 * 65536)])
def test_a_pool_too_small_or_too_large_is_refused(
    addresses: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _arguments(["--addresses", addresses])
    assert "--addresses must be 0 or between 1024" in capsys.readouterr().err


def test_the_command_line_names_a_pool_other_than_the_default() -> None:
    assert "--addresses" not in _arguments([]).command()
    assert _arguments(["--addresses", "0"]).command().endswith("--addresses 0")
