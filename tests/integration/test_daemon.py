"""The daemon end to end against three simulated dyups proxies."""

from __future__ import annotations

import threading

import pytest

from syncer.app import App
from syncer.model import Server, Upstream
from syncer.snapshot import load as load_snapshot

from .conftest import STATIC_VIEW, WAIT, eventually, metric, sim_view, want_view

BASE = {"web": ["10.0.0.1:80", "10.0.0.2:80"], "api": ["10.0.1.1:9000"]}


def test_changes_converge_on_every_worker_of_every_proxy(make_env):
    env = make_env(3)
    env.write(BASE)
    app = env.start()
    assert env.wait_converged()
    posts = [s.stats.posts for s in env.sims]
    env.write(
        {"web": ["10.0.0.1:80", "10.0.0.3:80"], "api": ["10.0.1.1:9000"], "new": ["10.0.2.1:80"]}
    )
    assert env.wait_converged()
    env.write({"web": ["10.0.0.3:80"], "api": ["10.0.1.1:9000"], "new": ["10.0.2.1:80"]})
    assert env.wait_converged()
    # exactly one POST per changed upstream per proxy: web, new, then web again
    assert [s.stats.posts - p for s, p in zip(env.sims, posts, strict=True)] == [3, 3, 3]
    env.write({"web": ["10.0.0.3:80"], "api": ["10.0.1.1:9000"]})
    assert env.wait_converged()
    assert all(s.stats.deletes == 1 for s in env.sims)
    assert eventually(lambda: app.ready()[0])
    for w in app.workers:
        assert metric(app, "dyups_syncer_sync_lag_seconds_count", proxy=w.label) >= 4


def test_static_upstreams_are_never_touched(make_env):
    env = make_env(1)
    env.write({**BASE, "static_be": ["10.9.9.9:80"]})
    app = env.start()
    sim = env.sims[0]
    assert sim.wait_until(lambda s: "web" in sim_view(s, 0) and "api" in sim_view(s, 0), WAIT)
    assert eventually(lambda: app.workers[0].last_plan.get("conflicts") == ["static_be"])
    assert sim_view(sim, 0)["static_be"] == STATIC_VIEW["static_be"]
    assert metric(app, "dyups_syncer_ownership_conflicts", proxy="p0") == 1
    env.write(BASE)
    assert env.wait_converged()
    assert sim.stats.deletes == 0  # static_be was never ours, so never deleted


def test_reload_is_repaired_by_the_probe(make_env):
    env = make_env(3)
    env.write(BASE)
    app = env.start(resync_interval=3600)  # only the probe can notice
    assert env.wait_converged()
    env.sims[1].reload()
    assert not env.converged(env.sims[1])
    assert env.wait_converged()
    assert metric(app, "dyups_syncer_drift_repairs_total", proxy="p1", reason="lost") == 2
    assert metric(app, "dyups_syncer_drift_repairs_total", proxy="p0", reason="lost") == 0


def test_a_crashed_nginx_worker_is_repaired(make_env):
    env = make_env(1, workers=4)
    env.write(BASE)
    env.start(resync_interval=3600)
    assert env.wait_converged()
    env.sims[0].crash_worker(2)
    assert env.wait_converged()


def test_conflict_storm_converges_and_is_counted(make_env):
    env = make_env(3, trylock=True, conflict_rate=0.3)
    env.write({f"u{i}": [f"10.0.0.{i}:80"] for i in range(1, 9)})
    app = env.start()
    assert env.wait_converged()
    env.write({f"u{i}": [f"10.0.0.{i}:81"] for i in range(1, 9)} | {"u1": ["10.0.0.1:80"]})
    assert env.wait_converged()
    for i, sim in enumerate(env.sims):
        assert sim.stats.conflicts > 0
        assert metric(app, "dyups_syncer_conflicts_total", proxy=f"p{i}") == sim.stats.conflicts


def test_restart_with_source_missing_restores_from_snapshot(make_env):
    env = make_env(2)
    env.write(BASE)
    app = env.start()
    assert env.wait_converged()
    app.shutdown()
    snap = load_snapshot(env.snapshot)
    assert snap is not None and set(snap.proxies["p0"]["owned"]) == {"web", "api"}
    desired = env.desired()
    env.file.unlink()
    for sim in env.sims:
        sim.restart()  # the proxies lost everything while the syncer was away
    app2 = env.start()
    assert env.wait_converged(desired=desired)
    assert all(s.stats.deletes == 0 for s in env.sims)
    assert app2.store.current().restoring  # still served from the snapshot: no deletes
    assert eventually(lambda: app2.ready()[0])


def test_hung_proxy_does_not_delay_the_others(make_env):
    env = make_env(3)
    env.write(BASE)
    env.start()
    assert env.wait_converged()
    hung = env.sims[2]
    hung.hang(True)
    env.write({"web": ["10.0.0.5:80"], "api": ["10.0.1.1:9000"]})
    assert env.wait_converged(env.sims[:2])
    assert not env.converged(hung)
    hung.hang(False)
    assert env.wait_converged()


def test_a_down_proxy_gets_a_full_reconcile_when_back(make_env):
    env = make_env(2)
    env.write(BASE)
    app = env.start()
    assert env.wait_converged()
    down = env.sims[1]
    down.go_down()
    down.restart()
    assert eventually(lambda: app.workers[1].up is False)
    assert metric(app, "dyups_syncer_proxy_up", proxy="p1") == 0
    env.write({"web": ["10.0.0.6:80"], "api": ["10.0.1.1:9000"]})
    assert env.wait_converged(env.sims[:1])
    down.come_up()
    assert env.wait_converged()
    assert metric(app, "dyups_syncer_proxy_up", proxy="p1") == 1


def test_bad_file_keeps_the_last_good_state(make_env):
    env = make_env(2)
    env.write(BASE)
    app = env.start()
    assert env.wait_converged()
    desired = env.desired()
    env.write('upstreams:\n  web:\n    servers: ["10.0.0.1:80; evil"]\n')
    src = app.sources[0]
    assert eventually(lambda: not src.healthy)
    assert "upstreams.web.servers.0" in src.last_error
    # a full resync happens and still nothing changes
    posts = [s.stats.posts for s in env.sims]
    reads = env.sims[0].stats.gets
    assert env.sims[0].wait_until(lambda s: s.stats.gets > reads + 5, WAIT)
    assert env.converged(env.sims[0], desired) and env.converged(env.sims[1], desired)
    assert [s.stats.posts for s in env.sims] == posts
    env.write("garbage: [")
    env.write(BASE | {"web": ["10.0.0.9:80"]})
    assert env.wait_converged()


def test_mass_delete_is_refused_until_overridden(make_env):
    env = make_env(1)
    env.write({f"u{i}": [f"10.0.0.{i}:80"] for i in range(1, 5)})
    app = env.start()
    assert env.wait_converged()
    env.write({"u1": ["10.0.0.1:80"]})
    sim = env.sims[0]
    assert eventually(lambda: metric(app, "dyups_syncer_breaker_open", proxy="p0") == 1)
    assert metric(app, "dyups_syncer_plan_refused_total", proxy="p0") == 1
    assert {"u2", "u3", "u4"} <= set(sim_view(sim, 0))
    app.store.override_breaker()
    assert env.wait_converged()
    assert metric(app, "dyups_syncer_breaker_open", proxy="p0") == 0


def test_truncated_body_is_caught_by_verify_and_reposted(make_env):
    env = make_env(1)
    env.write({"web": ["10.0.0.1:80"]})
    app = env.start()
    assert env.wait_converged()
    # Only a request over verify_min_bytes (1 KiB) can arrive in the three reads it
    # takes to be cut: 60 servers are about 1.3 KiB.
    env.sims[0].truncate_next_body(keep_servers=2)
    env.write({"web": [f"10.0.0.{i}:80" for i in range(1, 61)]})
    assert env.wait_converged()
    assert env.sims[0].stats.truncated == 1
    assert metric(app, "dyups_syncer_verify_failures_total", proxy="p0") == 1


def test_writes_are_paced_to_the_queue(make_env):
    # A 64 KiB zone drains every 50 ms: 100 upstreams of ~600 bytes overflow it
    # when written unpaced. Paced from the configured zone size: no alert.
    env = make_env(1, shm_zone_size=64 * 1024)
    env.write(
        {
            f"u{i}": [f"10.0.{i // 250}.{i % 250 + 1}:{p}" for p in range(8000, 8020)]
            for i in range(100)
        }
    )
    app = env.start()
    assert env.wait_converged()
    assert env.sims[0].stats.alerts == 0
    assert metric(app, "dyups_syncer_proxy_degraded_total", proxy="p0") == 0


def test_queue_overflow_is_repaired_when_the_budget_is_wrong(make_env):
    # The module's own 1 s timer: the queue (~20 KiB here) then drains far slower than
    # ~70 KiB of bodies are written, however slow a loaded machine makes the writes.
    env = make_env(1, shm_zone_size=32 * 1024, read_msg_timeout=1.0)
    env.write(
        {
            f"u{i}": [f"10.0.{i // 250}.{i % 250 + 1}:{p}" for p in range(8000, 8020)]
            for i in range(120)
        }
    )
    # ...but the operator told us 64 MiB every 50 ms: writes go too fast and overflow.
    app = env.start(
        proxies={
            "static": [
                {
                    "url": env.sims[0].url,
                    "name": "p0",
                    "read_msg_timeout": 0.05,
                    "shm_zone_size": "64m",
                }
            ]
        }
    )
    assert env.wait_converged()
    assert env.sims[0].stats.alerts > 0
    assert metric(app, "dyups_syncer_proxy_degraded_total", proxy="p0") == env.sims[0].stats.alerts


def test_head_flavour_converges_and_deletes(make_env):
    env = make_env(2, flavour="head")
    env.write(BASE)
    env.start()
    assert env.wait_converged()
    env.write({"web": ["10.0.0.1:80"]})
    assert env.wait_converged()


def test_rejected_body_is_not_resent(make_env):
    env = make_env(1, known_variables=())
    env.write(BASE)
    app = env.start()
    assert env.wait_converged()
    # hostnames the simulated DNS cannot resolve: the module answers `add server failed`
    up = Upstream("web", (Server("nowhere.invalid", 80, allow_hostname=True),))
    before = env.sims[0].stats.rejected
    app.store.publish(app.sources[0].name, {"web": up, "api": env.desired()["api"]})
    sim = env.sims[0]
    assert sim.wait_until(lambda s: s.stats.rejected == before + 1, WAIT)
    reads = sim.stats.gets
    assert sim.wait_until(lambda s: s.stats.gets > reads + 10, WAIT)  # several probe/resync rounds
    assert sim.stats.rejected == before + 1
    assert metric(app, "dyups_syncer_rejected_bodies_total", proxy="p0") == 1


def test_shutdown_flushes_snapshot_and_stops_threads(make_env):
    env = make_env(1)
    env.write(BASE)
    app = env.start()
    assert env.wait_converged()
    app.shutdown()
    assert not any(w.alive for w in app.workers)
    snap = load_snapshot(env.snapshot)
    assert set(snap.sources[app.sources[0].name]) == {"web", "api"}
    assert [t for t in threading.enumerate() if t.name.startswith(("proxy-", "source-"))] == []


def test_metrics_and_state_are_served(make_env):
    import json
    import urllib.request

    env = make_env(1)
    env.write(BASE)
    app = App(env.config())
    app.start(serve_http=True)
    env.apps.append(app)
    assert env.wait_converged()
    host, port = app.http.address
    base = f"http://{host}:{port}"
    assert eventually(lambda: app.ready()[0])
    assert urllib.request.urlopen(base + "/readyz").status == 200
    assert urllib.request.urlopen(base + "/healthz").read() == b"ok\n"
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    for name in (
        "sync_lag_seconds",
        "conflicts_total",
        "requests_total",
        "request_duration_seconds",
        "drift_repairs_total",
        "verify_failures_total",
        "proxy_up",
        "last_sync_timestamp_seconds",
        "upstreams_desired",
        "servers_desired",
        "plan_refused_total",
        "source_up",
        "source_errors_total",
    ):
        assert f"dyups_syncer_{name}" in text, name
    assert "dyups_syncer_upstreams_desired 2.0" in text
    state = json.loads(urllib.request.urlopen(base + "/state").read())
    assert set(state["desired"]) == {"web", "api"} and state["proxies"]["p0"]["up"] is True
    _ = want_view


def test_hand_edits_are_repaired_by_the_resync(make_env):
    from syncer.testing.dyups import raw_request

    env = make_env(1)
    env.write(BASE)
    app = env.start(resync_interval=0.3, probe_interval=60)  # only the resync can notice
    assert env.wait_converged()
    sim = env.sims[0]
    assert (
        raw_request(sim.url, "POST", "/upstream/web", b"server 10.6.6.6:80 weight=9;").status == 200
    )
    assert raw_request(sim.url, "DELETE", "/upstream/api").status == 200
    assert not env.converged(sim)
    assert env.wait_converged()
    assert metric(app, "dyups_syncer_drift_repairs_total", proxy="p0", reason="changed") == 1
    assert metric(app, "dyups_syncer_drift_repairs_total", proxy="p0", reason="missing") == 1


def test_dump_file_holds_what_the_proxy_accepted(make_env):
    env = make_env(1)
    env.write(BASE)
    dump = env.tmp / "dump" / "upstreams.conf"
    sim = env.sims[0]
    app = env.start(
        proxies={
            "static": [
                {"url": sim.url, "name": "p0", "read_msg_timeout": 0.05, "dump_path": str(dump)}
            ]
        }
    )
    assert env.wait_converged()
    assert eventually(
        lambda: (
            dump.exists()
            and "upstream api {" in dump.read_text()
            and "upstream web {" in dump.read_text()
        )
    )
    # a body the module refuses never reaches the file (it could stop nginx from starting)
    bad = Upstream("web", (Server("nowhere.invalid", 80, allow_hostname=True),))
    app.store.publish(app.sources[0].name, {"web": bad, "api": env.desired()["api"]})
    assert sim.wait_until(lambda s: s.stats.rejected == 1, WAIT)
    assert "nowhere.invalid" not in dump.read_text() and "10.0.0.1:80" in dump.read_text()
    # a reload loses the dynamic upstreams; the file keeps them for the next start
    sim.reload()
    assert sim.wait_until(lambda s: "api" in sim_view(s, 0), WAIT)
    assert "upstream web {" in dump.read_text()


def test_a_body_over_the_proxy_limit_is_never_sent(make_env):
    env = make_env(1)
    env.write(BASE)
    sim = env.sims[0]
    app = env.start(
        proxies={
            "static": [
                {"url": sim.url, "name": "p0", "read_msg_timeout": 0.05, "max_body_size": "1k"}
            ]
        }
    )
    assert env.wait_converged()
    big = {"web": [f"10.0.{i // 250}.{i % 250 + 1}:80" for i in range(100)], "api": BASE["api"]}
    env.write(big)
    assert eventually(lambda: metric(app, "dyups_syncer_rejected_bodies_total", proxy="p0") == 1)
    assert sim.stats.requests.get(("POST", 413), 0) == 0
    assert len(sim.upstreams(0)["web"]) == 2  # still the last good servers


def test_state_endpoint_can_be_turned_off(make_env):
    import urllib.error
    import urllib.request

    env = make_env(1)
    env.write(BASE)
    app = App(env.config(state_endpoint=False))
    app.start(serve_http=True)
    env.apps.append(app)
    host, port = app.http.address
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://{host}:{port}/state")
    assert e.value.code == 404
    assert urllib.request.urlopen(f"http://{host}:{port}/metrics").status == 200
