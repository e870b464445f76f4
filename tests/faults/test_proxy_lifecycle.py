"""Proxy lifecycle faults, through the simulator: reload, restart, a crashed nginx
worker, and the module's `alert: … not sync …` 500 (its message queue was full).

Timers as everywhere in tests/faults: probe every 100 ms, full resync every 1 s,
`dyups_read_msg_timeout` 50 ms. Each fault is injected `trials(...)` times
($DYUPS_FAULT_TRIALS when set); the time from each fault to the moment every
worker holds the desired state again is recorded (every sample, in the report),
with the drift reason the syncer counted ("lost" from the probe,
"missing"/"changed" from the resync).
"""

from __future__ import annotations

import functools
import random
import time

import pytest

from tests.faults.conftest import (
    REPAIR_BOUND,
    SEED,
    WAIT,
    differences,
    eventually,
    expected,
    lost,
    metric,
    record,
    trials,
    want_view,
)

SPEC = {
    "web": ["10.0.0.1:80", "10.0.0.2:80"],
    "api": ["10.0.1.1:9000"],
    "auth": ["10.0.2.1:8080", "10.0.2.2:8080"],
    "img": ["10.0.3.1:80"],
    "search": ["10.0.4.1:80", "10.0.4.2:80", "10.0.4.3:80"],
    "pay": ["10.0.5.1:443"],
}
REPEATS = trials(5)  # reload, restart, reload reverting an adopted upstream
CRASHES = trials(6)  # crashed workers, per worker count
ALERTS = trials(3)  # queue-full alerts, per method


def drift(app, proxy: str) -> dict[str, float]:
    return {
        reason: metric(app, "dyups_syncer_drift_repairs_total", proxy=proxy, reason=reason)
        for reason in ("lost", "missing", "changed")
    }


def posted(app, proxy: str) -> float:
    """POSTs the syncer saw accepted (and read back) on `proxy`."""
    return metric(app, "dyups_syncer_requests_total", proxy=proxy, method="POST", outcome="applied")


def repaired_after(sim, want, fault, app, proxy: str) -> tuple[float, float]:
    """Inject `fault`, wait until every worker holds `want`: the times until the
    syncer counted the drift, and until the repair was complete. Then wait until the
    syncer has finished that repair too (a re-post accepted and read back for every
    drift it counted), so that the next fault does not land in the middle of it."""
    counted, writes = sum(drift(app, proxy).values()), posted(app, proxy)
    noticed: list[float] = []

    def repaired(s) -> bool:
        if not noticed and sum(drift(app, proxy).values()) > counted:
            noticed.append(time.monotonic() - started)
        return not differences(s, want)

    fault()
    started = time.monotonic()
    assert sim.wait_until(repaired, WAIT, recheck=0.002), differences(sim, want)
    took = time.monotonic() - started
    repairs = sum(drift(app, proxy).values()) - counted
    assert eventually(lambda: posted(app, proxy) - writes >= repairs)
    return (noticed or [took])[0], took


@pytest.mark.parametrize("fault", ["reload", "restart"])
def test_reload_and_restart_are_repaired_by_the_probe(make_env, fault):
    """A reload or a restart loses every dynamic upstream on every worker: the next
    probe (`GET /list` on a fresh connection, whichever worker answers) sees them
    all missing and re-posts them, within about one probe interval. Counted as
    "lost" (or "missing" when a resync happened to read first)."""
    env = make_env(3)
    env.write(SPEC)
    app = env.start()
    assert env.wait_converged()
    desired = env.desired()
    sim = env.sims[1]
    want = expected(desired, sim)
    noticed, times, reasons = [], [], {"lost": 0.0, "missing": 0.0, "changed": 0.0}
    for _ in range(REPEATS):
        before = drift(app, "p1")
        seen, took = repaired_after(sim, want, getattr(sim, fault), app, "p1")
        noticed.append(seen)
        times.append(took)
        after = drift(app, "p1")
        delta = {k: after[k] - before[k] for k in after}
        # Every upstream was lost once, and is counted once, by one of the two reads.
        assert delta["lost"] + delta["missing"] == len(desired), delta
        reasons = {k: reasons[k] + delta[k] for k in reasons}
    for other in ("p0", "p2"):
        assert sum(drift(app, other).values()) == 0
    assert all(not differences(s, expected(desired, s)) for s in env.sims)
    assert all(s.stats.deletes == 0 for s in env.sims)  # lost: 0, and nothing deleted
    record(
        f"proxy {fault}",
        trials=len(times),
        converged=len(times),  # each repair was awaited (and asserted) above
        lost=sum(lost(differences(s, expected(desired, s))) for s in env.sims),
        counted=reasons,
        samples={"noticed_s": noticed, "repaired_s": times},
    )


def test_reload_reverting_an_adopted_upstream_needs_the_resync(make_env):
    """A reload brings back the nginx.conf version of an upstream the syncer adopted
    and overwrote. The probe only looks for missing names, and that one is present:
    only the resync, comparing servers, sees it changed. So this repair takes up to
    one resync interval; the dynamic upstreams lost in the same reload are back
    after about one probe interval."""
    env = make_env(1)
    env.write({**SPEC, "static_be": ["10.0.8.1:80"]})
    app = env.start(adopt=["static_be"])
    assert env.wait_converged()
    desired = env.desired()
    sim = env.sims[0]
    want = want_view(desired)
    noticed, times = [], []
    for _ in range(REPEATS):
        before = drift(app, "p0")
        seen, took = repaired_after(sim, want, sim.reload, app, "p0")
        after = drift(app, "p0")
        delta = {k: after[k] - before[k] for k in after}
        assert delta == {"lost": len(SPEC), "missing": 0, "changed": 1} or delta == {
            "lost": 0,
            "missing": len(SPEC),  # a resync happened to read first
            "changed": 1,
        }, delta
        noticed.append(seen)
        times.append(took)
    assert sim.stats.deletes == 0
    record(
        "proxy reload reverting an adopted upstream",
        trials=len(times),
        converged=len(times),
        lost=lost(differences(sim, want)),
        samples={"lost_noticed_s": noticed, "changed_repaired_s": times},
    )


@pytest.mark.parametrize("workers", [2, 4])
def test_a_crashed_worker_is_repaired(make_env, workers):
    """A crashed nginx worker is respawned with only the nginx.conf upstreams, after
    a pause of 2 × read_msg_timeout; the other workers keep theirs, so the workers
    disagree. Either read can notice:

    * the probe's `GET /list` goes out on a fresh connection, which lands on a random
      worker: it sees the loss only when it reaches the respawned one (1 chance in
      N workers per probe, so N probe intervals on average, and a geometric tail);
    * the resync's `GET /detail` goes out on the pooled keep-alive connection, which
      stays with one worker: it sees the loss only if that connection was the
      crashed worker's (reset by the crash, so the next read reconnects to a random
      worker), i.e. rarely.

    So it is mostly the probe, counted as "lost", in a few probe intervals rather
    than one; the resync interval is not needed, and it is not a bound either (its
    connection can stay with a healthy worker). Measured with 2 and 4 workers.
    """
    rng = random.Random(SEED)
    env = make_env(1, workers=workers)
    env.write(SPEC)
    app = env.start()
    assert env.wait_converged()
    desired = env.desired()
    sim = env.sims[0]
    want = expected(desired, sim)
    noticed, times, by = [], [], {"lost": 0, "missing": 0}
    for _ in range(CRASHES):
        before = drift(app, "p0")
        worker = rng.randrange(sim.workers)
        crash = functools.partial(sim.crash_worker, worker)
        seen, took = repaired_after(sim, want, crash, app, "p0")
        noticed.append(seen)
        times.append(took)
        after = drift(app, "p0")
        delta = {k: after[k] - before[k] for k in after}
        assert delta["lost"] + delta["missing"] == len(desired), delta
        by["lost" if delta["lost"] else "missing"] += 1
    assert sim.stats.deletes == 0
    record(
        f"nginx worker crash ({workers} workers)",
        trials=len(times),
        converged=len(times),
        lost=lost(differences(sim, want)),
        repaired_by_probe=by["lost"],
        repaired_by_resync=by["missing"],
        samples={"noticed_s": noticed, "repaired_s": times},
    )


def test_queue_full_alert_on_post_is_repaired(make_env):
    """`alert: update success but not sync to other process`: the answering worker
    has the new upstream, the others never will. The worker waits for the queue to
    drain and posts again (the alert is retryable), which repairs the other
    workers. Counted in proxy_degraded_total, one per alert (not as drift: the
    syncer knows at once, no read has to find it). ALERTS times, each with a new
    version of `web`."""
    env = make_env(1)
    env.write(SPEC)
    app = env.start()
    assert env.wait_converged()
    sim = env.sims[0]
    capacity = sim.queue_capacity

    def degraded() -> float:
        return metric(app, "dyups_syncer_proxy_degraded_total", proxy="p0")

    times = []
    for trial in range(ALERTS):
        alerts = sim.stats.alerts
        sim.queue_capacity = 0  # the module's message queue is full
        env.write({**SPEC, "web": ["10.0.0.1:80", f"10.0.0.3:{8000 + trial}"]})
        assert sim.wait_until(lambda s, n=alerts: s.stats.alerts > n, WAIT)
        assert sim.upstreams(0)["web"] != sim.upstreams(1)["web"]  # the workers disagree
        sim.queue_capacity = capacity  # the queue drains
        started = time.monotonic()
        want = expected(env.desired(), sim)
        assert sim.wait_until(lambda s, w=want: not differences(s, w), WAIT), differences(sim, want)
        times.append(time.monotonic() - started)
        assert eventually(lambda: degraded() == sim.stats.alerts), (degraded(), sim.stats.alerts)
    record(
        "alert 500 on POST",
        trials=len(times),
        converged=len(times),
        lost=lost(differences(sim, expected(env.desired(), sim))),
        alerts=sim.stats.alerts,
        drift_counted=drift(app, "p0"),
        samples={"repaired_s_after_queue_drained": times},
    )


def test_queue_full_alert_on_delete_is_repaired(make_env):
    """`alert: delte success but not sync to other process`: the answering worker
    deleted the upstream, the others keep it and never get the deletion.

    The worker retries the DELETE (the alert is retryable), on its pooled
    connection, so on the same nginx worker, which no longer has the upstream and
    answers 404 `not found uptream`: the syncer takes that as done ("gone"), stops
    owning the name, and the other workers route to the removed servers for good
    (the probe only looks for missing upstreams, the resync reads the one worker
    of its pooled connection, and an upstream no longer owned is never deleted).

    ALERTS times: `pay` is deleted under a full queue, then (queue drained, every
    worker without it) desired again.
    """
    env = make_env(1)
    env.write(SPEC)
    app = env.start()
    assert env.wait_converged()
    sim = env.sims[0]
    capacity = sim.queue_capacity
    remaining = {k: v for k, v in SPEC.items() if k != "pay"}
    times: list[float | None] = []
    found: list[str] = []
    for _ in range(ALERTS):
        alerts = sim.stats.alerts
        sim.queue_capacity = 0  # the module's message queue is full
        env.write(remaining)
        assert sim.wait_until(lambda s, n=alerts: s.stats.alerts > n, WAIT)
        sim.queue_capacity = capacity  # the queue drains
        started = time.monotonic()
        want = expected(env.desired(), sim)
        converged = sim.wait_until(lambda s, w=want: not differences(s, w), REPAIR_BOUND)
        times.append(time.monotonic() - started if converged else None)
        found = differences(sim, want)
        if not converged:
            break
        env.write(SPEC)  # `pay` desired again, for the next round
        assert env.wait_converged()
    record(
        "alert 500 on DELETE",
        trials=len(times),
        converged=sum(t is not None for t in times),
        lost=lost(found),
        alerts=sim.stats.alerts,
        left=found,
        samples={"gone_from_every_worker_s_after_queue_drained": times},
    )
    assert not found, (
        f"after a DELETE answered `alert`, {found} for {REPAIR_BOUND}s; "
        f"worker status {app.workers[0].status()}"
    )
