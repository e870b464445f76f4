"""`dyups_trylock on` with a busy lock half of the time: a POST gets 409, a DELETE
gets its connection closed without a byte. Everything must converge, nothing else
be deleted, and `dyups_syncer_conflicts_total` must count what the proxy refused.
The storm runs ROUNDS rounds of changes after the cold sync ($DYUPS_FAULT_TRIALS
when set).
"""

from __future__ import annotations

import time

from tests.faults.conftest import (
    REPAIR_BOUND,
    WAIT,
    differences,
    expected,
    lost,
    metric,
    record,
    trials,
)

NAMES = 9
ROUNDS = trials(3)


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
    the env, the app, the time each round took to converge and, if a round did not
    converge (within WAIT), what differed then (the storm stops there)."""
    env = make_env(2, trylock=True, conflict_rate=0.5)
    env.write(spec(0))
    app = env.start()
    took: list[float] = []
    for round_ in range(ROUNDS + 1):
        started = time.monotonic()
        env.write(spec(round_))
        if not env.wait_converged():
            found = [d for s in env.sims for d in differences(s, expected(env.desired(), s))]
            return env, app, took, (round_, found)
        took.append(time.monotonic() - started)
    return env, app, took, None


def refused(sim) -> dict[str, int]:
    return {
        "409": sim.stats.requests[("POST", 409)],
        "closed_delete": sim.stats.requests[("DELETE", 0)],
        "sim_conflicts": sim.stats.conflicts,
    }


def test_conflict_storm_converges(make_env):
    env, app, took, stuck = conflict_storm(make_env)
    found = stuck[1] if stuck else []
    counted = {
        f"p{i}": metric(app, "dyups_syncer_conflicts_total", proxy=f"p{i}")
        for i in range(len(env.sims))
    }
    # Recorded before the assertions, so that a failed storm still reports its rounds.
    record(
        "trylock conflict_rate=0.5",
        trials=stuck[0] if stuck else ROUNDS,  # rounds of changes made, after the cold sync
        converged=max(0, len(took) - 1),
        lost=lost(found),
        stuck_in_round=stuck[0] if stuck else None,
        left=found,
        refused={f"p{i}": refused(s) for i, s in enumerate(env.sims)},
        counted=counted,
        samples={"cold_sync_s": took[:1], "round_converged_s": took[1:]},
    )
    assert not stuck, f"round {stuck[0]} of {ROUNDS} did not converge within {WAIT}s: {found}"
    for sim in env.sims:
        assert not differences(sim, expected(env.desired(), sim))  # lost: 0
        got = refused(sim)
        assert got["409"] > 0 and got["closed_delete"] > 0  # both kinds happened
        # Only owned, no longer desired upstreams were ever deleted: static_be never.
        assert all(e.name != "static_be" for e in sim.applied if e.op == "delete")
    assert counted == {f"p{i}": s.stats.conflicts for i, s in enumerate(env.sims)}


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
