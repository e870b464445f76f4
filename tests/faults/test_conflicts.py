"""`dyups_trylock on` with a busy lock half of the time: a POST gets 409, a DELETE
gets its connection closed without a byte. Everything must converge, nothing else
be deleted, and `dyups_syncer_conflicts_total` must count what the proxy refused.
"""

from __future__ import annotations

import time

from tests.faults.conftest import REPAIR_BOUND, differences, expected, metric, record

NAMES = 9
ROUNDS = 3


def spec(round_: int) -> dict[str, list[str]]:
    """Round r: every upstream i with i % 3 != r % 3, on port 80 + r. From one round to
    the next a third of the upstreams go (DELETE), a third come back (POST), and the
    rest change servers (POST); a third of the owned ones deleted stays under the
    mass-delete breaker."""
    return {
        f"u{i:02d}": [f"10.0.{i}.1:{80 + round_}", f"10.0.{i}.2:80"]
        for i in range(NAMES)
        if i % 3 != round_ % 3
    }


def conflict_storm(make_env):
    """Cold sync then ROUNDS changes under trylock with conflict_rate 0.5; returns
    the env, the app and the time each round took to converge."""
    env = make_env(2, trylock=True, conflict_rate=0.5)
    env.write(spec(0))
    app = env.start()
    took = []
    for round_ in range(ROUNDS + 1):
        started = time.monotonic()
        env.write(spec(round_))
        assert env.wait_converged(), [differences(s, expected(env.desired(), s)) for s in env.sims]
        took.append(time.monotonic() - started)
    return env, app, took


def refused(sim) -> dict[str, int]:
    return {
        "409": sim.stats.requests[("POST", 409)],
        "closed_delete": sim.stats.requests[("DELETE", 0)],
        "sim_conflicts": sim.stats.conflicts,
    }


def test_conflict_storm_converges(make_env):
    env, app, took = conflict_storm(make_env)
    for sim in env.sims:
        assert not differences(sim, expected(env.desired(), sim))  # lost: 0
        got = refused(sim)
        assert got["409"] > 0 and got["closed_delete"] > 0  # both kinds happened
        # Only owned, no longer desired upstreams were ever deleted: static_be never.
        assert all(e.name != "static_be" for e in sim.applied if e.op == "delete")
    counted = {
        f"p{i}": metric(app, "dyups_syncer_conflicts_total", proxy=f"p{i}")
        for i in range(len(env.sims))
    }
    assert counted == {f"p{i}": s.stats.conflicts for i, s in enumerate(env.sims)}
    record(
        "trylock conflict_rate=0.5",
        rounds=len(took),
        converge_s_max=max(took),
        refused={f"p{i}": refused(s) for i, s in enumerate(env.sims)},
        counted=counted,
    )


def test_conflicts_total_matches_the_simulator(make_env):
    """Every refused write is counted. A DELETE that finds the lock busy is answered
    by closing the connection; on a reused keep-alive connection that looks like a
    connection the server had closed while idle, and must still be counted as a
    conflict, not resent at once as if stale (which under-counted until 28be7bb).
    Made deterministic with a lock that is always busy while one DELETE is due."""
    env = make_env(1, trylock=True)
    env.write(spec(0))
    app = env.start()
    assert env.wait_converged()
    sim = env.sims[0]
    sim.set_conflict_rate(1.0)
    env.write({k: v for k, v in spec(0).items() if k != "u01"})
    assert sim.wait_until(lambda s: s.stats.requests[("DELETE", 0)] >= 4, REPAIR_BOUND)
    sim.set_conflict_rate(0.0)
    assert env.wait_converged()
    counted = metric(app, "dyups_syncer_conflicts_total", proxy="p0")
    assert counted == sim.stats.conflicts, {**refused(sim), "conflicts_total": counted}
