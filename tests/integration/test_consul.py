"""The daemon with the Consul source against the fake agent (blocking queries, the real
client library) and simulated proxies. CI runs this file with py-consul and once more
with python-consul2."""

from __future__ import annotations

import pytest

from syncer.model import Server, Upstream
from tests.fakes.consul_agent import FakeConsulAgent

from .conftest import WAIT, eventually, metric, roles, zoned_proxies

pytestmark = pytest.mark.consul


@pytest.fixture(autouse=True)
def _no_consul_env(monkeypatch):
    # python-consul2 lets CONSUL_HTTP_ADDR override the configured address.
    for name in ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_SSL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def agent():
    with FakeConsulAgent(consul_service=True) as fake:
        yield fake


def up(name, *addresses, weight=1):
    servers = []
    for a in addresses:
        host, _, port = a.rpartition(":")
        servers.append(Server(host.strip("[]"), int(port), weight=weight))
    return Upstream(name, tuple(servers))


def consul_cfg(agent, **extra):
    source = {
        "type": "consul",
        "address": f"127.0.0.1:{agent.port}",
        "wait": "2s",
        "min_interval": "50ms",
        **extra,
    }
    return {"sources": [source]}


def discovery_cfg(agent, tmp_path):
    """A syncer whose upstreams and proxies both come from the fake agent."""
    from syncer.config import Config

    return Config.model_validate(
        {
            "sources": [{"type": "consul", "address": f"127.0.0.1:{agent.port}", "wait": "2s"}],
            "proxies": {
                "consul": {
                    "service": "nginx",
                    "read_msg_timeout": 0.05,
                    "wait": "2s",
                    "client": {"address": f"127.0.0.1:{agent.port}"},
                }
            },
            "snapshot_path": str(tmp_path / "snap.json"),
            "debounce": 0,
            "probe_interval": 0.1,
            "listen": "127.0.0.1:0",
        }
    )


def test_follows_registrations_and_health(make_env, agent):
    agent.register("n1", "10.0.0.1", "web", "web-1", port=8080, tags=["dyups"])
    agent.register("n2", "10.0.0.2", "web", "web-2", port=8080, tags=["dyups"])
    agent.register("n3", "10.0.0.3", "other", "other-1", tags=[])  # does not opt in
    env = make_env(2)
    app = env.start(**consul_cfg(agent))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080", "10.0.0.2:8080")})
    agent.set_status("web-2", "critical")
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    agent.register(
        "n4", "10.0.0.4", "web", "web-4", port=8081, tags=["dyups"], service_address="10.9.0.4"
    )
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080", "10.9.0.4:8081")})
    # a service that opts in by meta, with its own upstream name and weights
    agent.register(
        "n5",
        "10.0.0.5",
        "api",
        "api-1",
        meta={"dyups-upstream": "API"},
        weights={"Passing": 4, "Warning": 1},
    )
    assert env.wait_converged(
        desired={
            "web": up("web", "10.0.0.1:8080", "10.9.0.4:8081"),
            "api": up("api", "10.0.0.5:8080", weight=4),
        }
    )
    status = app.sources[0].status()
    assert status["watchers"]["web"]["x_consul_index"] > 0
    # opting out removes the upstream (one of two: no mass deletion)
    agent.register("n5", "10.0.0.5", "api", "api-1", meta={})
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080", "10.9.0.4:8081")})


def test_warning_instances_when_configured(make_env, agent):
    agent.register(
        "n1", "10.0.0.1", "web", "web-1", tags=["dyups"], weights={"Passing": 5, "Warning": 2}
    )
    agent.register(
        "n2",
        "10.0.0.2",
        "web",
        "web-2",
        tags=["dyups"],
        weights={"Passing": 5, "Warning": 2},
        status="warning",
    )
    env = make_env(1)
    env.start(**consul_cfg(agent, statuses=["passing", "warning"]))
    want = Upstream("web", (Server("10.0.0.1", 8080, weight=5), Server("10.0.0.2", 8080, weight=2)))
    assert env.wait_converged(desired={"web": want})


def test_outage_and_empty_answers_delete_nothing(make_env, agent):
    agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])
    agent.register("n2", "10.0.0.2", "api", "api-1", tags=["dyups"])
    env = make_env(1)
    app = env.start(**consul_cfg(agent))
    want = {"web": up("web", "10.0.0.1:8080"), "api": up("api", "10.0.0.2:8080")}
    assert env.wait_converged(desired=want)
    # the leader-election glitch: every health query answers [] at once. With an
    # unchanged index that is "no change" (Consul's rule); with a moved one the
    # services are empty, and their last known servers are kept.
    agent.empty_all(True)
    agent.touch("web")
    agent.touch("api")
    assert eventually(
        lambda: (
            metric(app, "dyups_syncer_source_errors_total", source="consul", reason="empty_service")
            == 2
        )
    )
    assert env.converged(env.sims[0], want)
    agent.empty_all(False)
    agent.go_down()
    src = app.sources[0]
    assert eventually(lambda: not src.healthy)
    reads = env.sims[0].stats.gets
    assert env.sims[0].wait_until(lambda s: s.stats.gets > reads + 5, WAIT)
    assert env.converged(env.sims[0], want) and env.sims[0].stats.deletes == 0
    agent.come_up()
    agent.register("n3", "10.0.0.3", "web", "web-3", tags=["dyups"])
    want["web"] = up("web", "10.0.0.1:8080", "10.0.0.3:8080")
    assert env.wait_converged(desired=want)
    assert eventually(lambda: src.healthy)


def test_index_going_backwards_resets_and_follows(make_env, agent):
    agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])
    env = make_env(1)
    env.start(**consul_cfg(agent))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    app = env.apps[0]
    agent.reset_index(1)  # a snapshot restore: the index goes backwards
    assert eventually(lambda: app.sources[0].status()["watchers"]["web"]["x_consul_index"] <= 1)
    agent.register("n2", "10.0.0.2", "web", "web-2", tags=["dyups"])
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080", "10.0.0.2:8080")})


def test_unchanged_fast_answers_are_rate_limited(make_env, agent):
    agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])
    env = make_env(1)
    env.start(**consul_cfg(agent, min_interval="200ms"))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    before = agent.count(endpoint="health.service", service="web")
    agent.answer_unchanged_fast(50)
    # 50 instant unchanged answers: at one query per 200 ms that takes seconds, not a spin
    assert agent.wait_for(
        lambda: agent.count(endpoint="health.service", service="web") >= before + 5, timeout=10
    )
    assert agent.count(endpoint="health.service", service="web") < before + 40


def test_bad_meta_rejects_that_service_only(make_env, agent):
    agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])
    agent.register("n2", "10.0.0.2", "api", "api-1", tags=["dyups"])
    env = make_env(1)
    app = env.start(**consul_cfg(agent))
    want = {"web": up("web", "10.0.0.1:8080"), "api": up("api", "10.0.0.2:8080")}
    assert env.wait_converged(desired=want)
    agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"], meta={"dyups-weight": "abc"})
    agent.register("n2", "10.0.0.7", "api", "api-1", tags=["dyups"])
    want["api"] = up("api", "10.0.0.7:8080")
    assert env.wait_converged(desired=want)
    assert eventually(
        lambda: (
            metric(app, "dyups_syncer_source_rejected_total", source="consul", reason="instance")
            == 1
        )
    )


def test_acl_token_from_the_environment(make_env, monkeypatch):
    with FakeConsulAgent(acl_tokens={"secret": None}) as agent:
        agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", "secret")
        env = make_env(1)
        env.start(**consul_cfg(agent))
        assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
        assert {r.token for r in agent.requests} == {"secret"}


def test_proxies_discovered_through_consul(agent, tmp_path):
    from syncer.app import App
    from syncer.testing.dyups import DyupsSimulator

    from .conftest import STATIC

    sims = [DyupsSimulator(static=STATIC, read_msg_timeout=0.05).start() for _ in range(2)]
    try:
        agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])
        agent.register(
            "edge1",
            "127.0.0.1",
            "nginx",
            "nginx-1",
            port=80,
            meta={"dyups-port": str(sims[0].port)},
        )
        cfg = discovery_cfg(agent, tmp_path)
        app = App(cfg)
        app.start(serve_http=False)
        try:
            assert sims[0].wait_until(lambda s: "web" in s.upstreams(0), WAIT)
            agent.register(
                "edge2",
                "127.0.0.1",
                "nginx",
                "nginx-2",
                port=80,
                meta={"dyups-port": str(sims[1].port)},
            )
            assert sims[1].wait_until(
                lambda s: "web" in s.upstreams(0) and "web" in s.upstreams(1), WAIT
            )
            agent.set_status("nginx-1", "critical")
            assert eventually(lambda: [w.label for w in app.workers] == ["nginx-2"])
        finally:
            app.shutdown()
    finally:
        for s in sims:
            s.stop()


def test_a_bad_token_is_an_error_not_a_deletion(make_env, monkeypatch):
    with FakeConsulAgent(acl_tokens={"secret": None}) as agent:
        agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])
        env = make_env(1)
        app = env.start(**consul_cfg(agent, token="secret"))
        assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
        app.shutdown()
        # restarted with a wrong token: 403 ACL not found; the snapshot keeps the proxy served
        env.sims[0].restart()
        app2 = env.start(**consul_cfg(agent, token="wrong"))
        assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
        src = app2.sources[0]
        assert eventually(lambda: "ACL not found" in src.last_error)
        assert not src.healthy and env.sims[0].stats.deletes == 0


def test_two_syncers_with_the_consul_lock_exactly_one_writes(make_env, agent):
    agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])
    env = make_env(1)
    le = {
        "enabled": True,
        "backend": "consul",
        "lease_duration": "10s",
        "renew_deadline": "5s",
        "retry_period": "100ms",
        "consul": {
            "key": "service/dyups-syncer/leader",
            "lock_delay": "0s",
            "client": {"address": f"127.0.0.1:{agent.port}"},
        },
    }
    a = env.start(**consul_cfg(agent), leader_election={**le, "identity": "a"})
    b = env.start(**consul_cfg(agent), leader_election={**le, "identity": "b"})
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    assert eventually(lambda: a.elector.is_leader() != b.elector.is_leader())
    leader, follower = (a, b) if a.elector.is_leader() else (b, a)
    agent.register("n2", "10.0.0.2", "web", "web-2", tags=["dyups"])
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080", "10.0.0.2:8080")})
    assert (
        metric(
            follower, "dyups_syncer_requests_total", proxy="p0", method="POST", outcome="applied"
        )
        == 0
    )
    assert follower.workers[0].following
    leader.shutdown()  # releases the lock; no lock-delay on an explicit release
    assert eventually(lambda: follower.elector.is_leader())
    agent.set_status("web-1", "critical")
    assert env.wait_converged(desired={"web": up("web", "10.0.0.2:8080")})
    assert (
        metric(
            follower, "dyups_syncer_requests_total", proxy="p0", method="POST", outcome="applied"
        )
        >= 1
    )


def test_an_expired_session_is_replaced(make_env):
    clock = [0.0]
    with FakeConsulAgent(clock=lambda: clock[0]) as agent:
        agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])
        env = make_env(1)
        le = {
            "enabled": True,
            "backend": "consul",
            "lease_duration": "10s",
            "renew_deadline": "5s",
            "retry_period": "100ms",
            "consul": {"lock_delay": "0s", "client": {"address": f"127.0.0.1:{agent.port}"}},
        }
        app = env.start(**consul_cfg(agent), leader_election={**le, "identity": "a"})
        assert eventually(lambda: app.elector.is_leader())
        for session in agent.sessions:
            agent.expire_session(session["ID"])
        # the lock comes back with a new session
        assert eventually(
            lambda: (
                app.elector.is_leader()
                and len(agent.sessions) == 1
                and agent.kv_entry("service/dyups-syncer/leader")["Session"] is not None
            )
        )


def test_discovered_proxies_take_the_zone_of_their_node_meta(agent, tmp_path):
    from syncer.app import App
    from syncer.testing.dyups import DyupsSimulator

    from .conftest import STATIC

    sim = DyupsSimulator(static=STATIC, read_msg_timeout=0.05).start()
    try:
        agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])

        def register_proxy(node_meta):
            agent.register(
                "edge1",
                "127.0.0.1",
                "nginx",
                "nginx-1",
                port=80,
                meta={"dyups-port": str(sim.port)},
                node_meta=node_meta,
            )

        register_proxy({"zone": "a"})
        cfg = discovery_cfg(agent, tmp_path)
        app = App(cfg)
        app.start(serve_http=False)

        def zones():
            return {w.label: w.s.zone for w in app.workers}

        try:
            assert sim.wait_until(lambda s: "web" in s.upstreams(0), WAIT)
            assert zones() == {"nginx-1": "a"}
            register_proxy({"zone": "b"})  # the node's meta changes: the proxy is re-targeted
            assert eventually(lambda: zones() == {"nginx-1": "b"})
            register_proxy({"zone": "not a label value"})
            assert eventually(lambda: zones() == {"nginx-1": ""})
            (worker,) = app.workers
            assert eventually(worker.reconciled_once.is_set)
            assert "web" in sim.upstreams(0)
        finally:
            app.shutdown()
    finally:
        sim.stop()


# ---------------------------------------------------------------- traffic policies


def _split(local, remote):
    return {**dict.fromkeys(local, "primary"), **dict.fromkeys(remote, "backup")}


def test_a_zone_aware_service_gives_each_proxy_its_zone_as_primaries(make_env, agent):
    meta = {"dyups-zone-aware": "true"}
    for i, (zone, ip) in enumerate(
        [("a", "10.0.1.1"), ("a", "10.0.1.2"), ("b", "10.0.2.1"), ("b", "10.0.2.2")]
    ):
        agent.register(
            f"n{i}", ip, "web", f"web-{i}", tags=["dyups"], meta=meta, node_meta={"zone": zone}
        )
    env = make_env(2)
    env.start(**consul_cfg(agent), proxies=zoned_proxies(env, ["a", "b"]))
    a = {"10.0.1.1:8080", "10.0.1.2:8080"}
    b = {"10.0.2.1:8080", "10.0.2.2:8080"}
    assert env.sims[0].wait_until(lambda s: roles(s, "web") == _split(a, b), WAIT)
    assert env.sims[1].wait_until(lambda s: roles(s, "web") == _split(b, a), WAIT)
    # Zone a is down to one endpoint (under min-local 2): proxy a gets all as primary.
    agent.set_status("web-0", "critical")
    a1 = {"10.0.1.2:8080"}
    assert env.sims[0].wait_until(lambda s: roles(s, "web") == _split(a1 | b, ()), WAIT)
    assert env.sims[1].wait_until(lambda s: roles(s, "web") == _split(b, a1), WAIT)
    # The default path's query is unchanged: passing instances only.
    health = [r for r in agent.requests if r.endpoint == "health.service"]
    assert health and all(r.param("passing") == "1" for r in health)


def test_a_critical_instance_drains_as_backup_then_goes(make_env, agent):
    drains = {"dyups-drain-as-backup": "true", "dyups-drain-seconds": "3s"}
    agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"], meta=drains)
    agent.register("n2", "10.0.0.2", "web", "web-2", tags=["dyups"], meta=drains)
    agent.register("n3", "10.0.0.3", "api", "api-1", tags=["dyups"])
    env = make_env(1)
    app = env.start(**consul_cfg(agent))
    (sim,) = env.sims
    both = {"10.0.0.1:8080": "primary", "10.0.0.2:8080": "primary"}
    assert sim.wait_until(lambda s: roles(s, "web") == both, WAIT)
    # The answer showed drain-as-backup: web's query now asks for every instance
    # (api's, under the default policy, still for the passing ones only).
    assert eventually(
        lambda: any(
            r.param("passing") is None
            for r in agent.requests
            if r.endpoint == "health.service" and r.service == "web"
        )
    )
    agent.set_status("web-2", "critical")
    draining = {"10.0.0.1:8080": "primary", "10.0.0.2:8080": "backup"}
    assert sim.wait_until(lambda s: roles(s, "web") == draining, WAIT)
    assert sim.wait_until(lambda s: roles(s, "web") == {"10.0.0.1:8080": "primary"}, WAIT)
    # healthy again: back in rotation
    agent.set_status("web-2", "passing")
    assert sim.wait_until(lambda s: roles(s, "web") == both, WAIT)
    api = [r for r in agent.requests if r.endpoint == "health.service" and r.service == "api"]
    assert api and all(r.param("passing") == "1" for r in api)
    # The policy goes: the query filters again, and a critical instance just leaves.
    agent.register("n1", "10.0.0.1", "web", "web-1", tags=["dyups"])
    agent.register("n2", "10.0.0.2", "web", "web-2", tags=["dyups"])
    assert eventually(lambda: not app.sources[0].status()["rejected"])
    agent.clear_requests()
    agent.set_status("web-2", "critical")
    assert sim.wait_until(lambda s: roles(s, "web") == {"10.0.0.1:8080": "primary"}, WAIT)
    assert eventually(
        lambda: any(r.service == "web" and r.param("passing") == "1" for r in agent.requests)
    )
