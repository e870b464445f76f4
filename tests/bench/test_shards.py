"""`python -m bench shards`: its options, how it reads the replicas, and a short run with
two replicas that must split the proxies, each written by one replica only."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from bench.__main__ import DEFAULTS, _arguments, _overrides, main
from bench.harness import Metrics
from bench.shards import ShardsOptions, balanced, command, held_shards, holders, writers
from tests.bench.tables import table


def _options(argv: list[str]) -> ShardsOptions:
    args = _arguments(argv)
    opts = dataclasses.replace(DEFAULTS[args.scenario], **_overrides(args))
    assert isinstance(opts, ShardsOptions)
    return opts


def test_options_and_the_command_line_that_gives_them_back() -> None:
    opts = _options(["shards", "--replicas", "1,3", "--shards", "6", "--proxies", "8"])
    assert (opts.replicas, opts.shards, opts.proxies) == ((1, 3), 6, 8)
    assert [opts.shards_for(r) for r in opts.replicas] == [6, 6]
    assert _options(command("shards", opts).split()[3:]) == opts
    default = _options(["shards"])
    assert default.replicas == (1, 2, 4) and default.shards_for(4) == 4
    assert _options(command("shards", default).split()[3:]) == default


@pytest.mark.parametrize(
    "argv",
    [
        ["churn", "--replicas", "2"],
        ["limits", "--shards", "2"],
        ["shards", "--source", "file"],
        ["shards", "--replicas", "0"],
        ["shards", "--shards", "257"],
        ["shards", "--poll-interval", "1"],
        ["shards", "--proxies", "4,8"],
        ["all", "--replicas", "2"],
    ],
)
def test_options_of_other_scenarios_or_out_of_range_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _arguments(argv)


def test_balanced_when_every_shard_is_held_evenly_and_every_member_seen() -> None:
    assert balanced([2, 2], [2, 2], 4)
    assert balanced([1, 2], [2, 2], 3)
    assert not balanced([1, 2], [2, 2], 4)  # a shard not held
    assert not balanced([3, 1], [2, 2], 4)  # would still move
    assert not balanced([2, 2], [2, 1], 4)  # one does not see the other yet
    # The single Lease: one leader, and no membership Leases.
    assert balanced([1], [0], 1)
    assert balanced([0, 1], [0, 0], 1)
    assert not balanced([1, 1], [0, 0], 1)


def _metrics(**posts: float) -> Metrics:
    return Metrics(
        "".join(
            f'dyups_syncer_requests_total{{method="POST",outcome="applied",proxy="{p}"}} {n}\n'
            f'dyups_syncer_requests_total{{method="GET",outcome="ok",proxy="{p}"}} 100\n'
            for p, n in posts.items()
        )
    )


def test_writers_are_the_replicas_whose_posts_to_a_proxy_grew() -> None:
    before = [_metrics(p0=5, p1=0, p2=1), _metrics(p0=0, p1=3, p2=1)]
    after = [_metrics(p0=9, p1=0, p2=2), _metrics(p0=0, p1=4, p2=2)]
    assert writers(before, after, ["p0", "p1", "p2", "p3"]) == {
        "p0": [0],
        "p1": [1],
        "p2": [0, 1],
        "p3": [],
    }


def test_holders_of_each_proxys_shard_from_the_replicas_state() -> None:
    shard_of = {"p0": 0, "p1": 1, "p2": 2}
    states: list[dict[str, Any]] = [
        {"leader": {"leading": True, "held": [0, 2], "proxies": shard_of}},
        {"leader": {"leading": True, "held": [1], "proxies": shard_of}},
        {"leader": {"leading": False, "held": [], "proxies": shard_of}},
    ]
    assert [held_shards(s) for s in states] == [[0, 2], [1], []]
    assert holders(states, ["p0", "p1", "p2"]) == {"p0": 0, "p1": 1, "p2": 0}
    # Two replicas claiming one shard: no single holder.
    states[2]["leader"]["held"] = [1]
    assert holders(states, ["p1"]) == {"p1": None}
    # The single Lease: its leader holds shard 0, every proxy's.
    single: list[dict[str, Any]] = [
        {"leader": {"identity": "r0", "leading": False}},
        {"leader": {"identity": "r1", "leading": True}},
    ]
    assert [held_shards(s) for s in single] == [[], [0]]
    assert holders(single, ["p0", "p1"]) == {"p0": 1, "p1": 1}


def test_two_replicas_split_the_proxies_and_each_proxy_has_one_writer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["shards", "--replicas", "2", "--proxies", "4", "--upstreams", "10"]
    assert main([*argv, "--servers", "2", "--rate", "5", "--duration", "2"]) == 0

    out = capsys.readouterr().out
    rows = table(out)
    assert "| figure | 2 replicas, 2 shards |" in out
    assert rows["p99 ≤ 1 s and every change on every proxy"] == "yes"
    assert rows["changes that reached every proxy (within 60 s of the last)"] == "10 of 10"
    assert rows["POSTs per change per proxy (every replica's)"] == "1.000 (40 / 40)"
    one_writer = (
        "proxies written during the changes by exactly one replica, the holder of their shard"
    )
    assert rows[one_writer] == "4 of 4"
    held = rows["shards held (their indexes), per replica"]
    assert held in ("r0 [0] / r1 [1]", "r0 [1] / r1 [0]")
    written = rows["proxies written during the changes, per replica"]
    assert sum(int(part.split()[1]) for part in written.split(" / ")) == 4
    assert rows["warnings and errors logged, per replica"] == "r0 0 / r1 0"
