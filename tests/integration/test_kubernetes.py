"""The daemon with the Kubernetes source, proxy discovery and leader election, against
the fake API server (real wire protocol, real client library) and simulated proxies."""

from __future__ import annotations

import socket

import pytest

from syncer.app import App
from syncer.config import Config
from syncer.model import Server, Upstream
from syncer.testing.dyups import DyupsSimulator
from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.kube_objects import endpoint, endpoint_slice, pod, service

from .conftest import STATIC, WAIT, eventually, metric

P = "dyups-syncer.io"


@pytest.fixture
def kube():
    with FakeKubeAPI(bookmark_interval=0.2) as api:
        yield api


def opted_in(name="web", ns="shop", **annotations):
    return service(ns, name, annotations={f"{P}/upstream": name, **annotations})


def eps(*ips, ready=True, serving=None, terminating=False):
    return [endpoint(ip, ready=ready, serving=serving, terminating=terminating) for ip in ips]


def slice_of(name, service_name="web", ns="shop", endpoints=(), address_type="IPv4", port=8080):
    return endpoint_slice(
        ns,
        name,
        service=service_name,
        address_type=address_type,
        endpoints=list(endpoints),
        ports=[{"name": "http", "port": port, "protocol": "TCP"}],
    )


def up(name, *addresses):
    servers = []
    for a in addresses:
        host, _, port = a.rpartition(":")
        servers.append(Server(host.strip("[]"), int(port)))
    return Upstream(name, tuple(servers))


def kube_config(env, kube, **overrides):
    data = {
        "sources": [{"type": "kubernetes", "client": {"api_url": kube.url}, "watch_timeout": 30}],
        "allow_empty": False,
    }
    data.update(overrides)
    return data


def test_initial_sync_scale_and_removal(make_env, kube):
    kube.apply(opted_in("web"))
    kube.apply(service("shop", "ignored"))
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1", "10.0.0.2")))
    kube.apply(slice_of("ignored-a", "ignored", endpoints=eps("10.9.0.1")))
    env = make_env(2)
    app = env.start(**kube_config(env, kube))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080", "10.0.0.2:8080")})
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1", "10.0.0.2", "10.0.0.3")))
    assert env.wait_converged(
        desired={"web": up("web", "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080")}
    )
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.3")))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.3:8080")})
    assert app.sources[0].synced
    kube.apply(opted_in("api"))
    kube.apply(slice_of("api-a", "api", endpoints=eps("10.0.1.1")))
    assert env.wait_converged(
        desired={"web": up("web", "10.0.0.3:8080"), "api": up("api", "10.0.1.1:8080")}
    )
    # a service stops opting in: its upstream goes
    kube.apply(service("shop", "web"))
    assert env.wait_converged(desired={"api": up("api", "10.0.1.1:8080")})
    assert all(s.stats.deletes == 1 for s in env.sims)
    # the last one going would empty the source: held, nothing deleted (store policy)
    kube.delete("services", "shop", "api")
    assert eventually(lambda: app.store.held_empty == {"kubernetes"})
    assert env.converged(env.sims[0], {"api": up("api", "10.0.1.1:8080")})


def test_multi_slice_dual_stack_and_rolling_update(make_env, kube):
    kube.apply(opted_in("web"))
    kube.apply(slice_of("web-v4", endpoints=eps("10.0.0.1", "10.0.0.2")))
    kube.apply(slice_of("web-v6", endpoints=eps("fd00::1"), address_type="IPv6"))
    env = make_env(1)
    env.start(**kube_config(env, kube))
    assert env.wait_converged(
        desired={"web": up("web", "10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080")}
    )
    # every pod terminating at once (still serving): kube-proxy's fallback keeps them
    kube.apply(
        slice_of(
            "web-v4",
            endpoints=eps("10.0.0.1", "10.0.0.2", ready=False, serving=True, terminating=True),
        )
    )
    kube.apply(slice_of("web-v6", endpoints=[]))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080", "10.0.0.2:8080")})
    # new pods ready: the terminating ones leave
    kube.apply(
        slice_of(
            "web-v4",
            endpoints=[
                *eps("10.0.0.5"),
                *eps("10.0.0.1", ready=False, serving=True, terminating=True),
            ],
        )
    )
    assert env.wait_converged(desired={"web": up("web", "10.0.0.5:8080")})


def test_410_in_the_middle_of_a_burst_loses_nothing(make_env, kube):
    kube.apply(opted_in("web"))
    kube.apply(opted_in("api"))
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1")))
    kube.apply(slice_of("api-a", "api", endpoints=eps("10.0.1.1")))
    env = make_env(1)
    app = env.start(**kube_config(env, kube))
    assert env.wait_converged(
        desired={"web": up("web", "10.0.0.1:8080"), "api": up("api", "10.0.1.1:8080")}
    )
    for i in range(2, 6):
        kube.apply(slice_of("web-a", endpoints=eps(*(f"10.0.0.{j}" for j in range(1, i + 1)))))
    kube.compact()
    kube.expire_next_watch(2)
    kube.close_watches()
    kube.delete("endpointslices", "shop", "api-a")
    kube.apply(slice_of("api-b", "api", endpoints=eps("10.0.1.7")))
    kube.apply(opted_in("new"))
    kube.apply(slice_of("new-a", "new", endpoints=eps("10.0.2.1")))
    want = {
        "web": up("web", *(f"10.0.0.{j}:8080" for j in range(1, 6))),
        "api": up("api", "10.0.1.7:8080"),
        "new": up("new", "10.0.2.1:8080"),
    }
    assert env.wait_converged(desired=want)
    src = app.sources[0]
    assert eventually(lambda: sum(w.gone for w in src.watches) >= 1)
    assert sum(w.relists for w in src.watches) >= 3


def test_api_outage_deletes_nothing_and_resumes(make_env, kube):
    kube.apply(opted_in("web"))
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1")))
    env = make_env(1)
    app = env.start(**kube_config(env, kube))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    kube.go_down()
    src = app.sources[0]
    assert eventually(lambda: not src.healthy)
    assert metric(app, "dyups_syncer_source_up", source="kubernetes") == 0
    reads = env.sims[0].stats.gets
    assert env.sims[0].wait_until(lambda s: s.stats.gets > reads + 5, WAIT)  # probes go on
    assert env.converged(env.sims[0], {"web": up("web", "10.0.0.1:8080")})
    assert env.sims[0].stats.deletes == 0
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.2")))
    kube.come_up()
    assert env.wait_converged(desired={"web": up("web", "10.0.0.2:8080")})
    assert eventually(lambda: src.healthy)


def test_empty_service_keeps_its_servers(make_env, kube):
    kube.apply(opted_in("web"))
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1")))
    env = make_env(1)
    app = env.start(**kube_config(env, kube))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    kube.apply(slice_of("web-a", endpoints=[]))
    assert eventually(
        lambda: (
            metric(
                app, "dyups_syncer_source_errors_total", source="kubernetes", reason="empty_service"
            )
            == 1
        )
    )
    assert env.converged(env.sims[0], {"web": up("web", "10.0.0.1:8080")})


def test_bad_annotations_reject_one_service_only(make_env, kube):
    kube.apply(opted_in("web"))
    kube.apply(opted_in("api"))
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1")))
    kube.apply(slice_of("api-a", "api", endpoints=eps("10.0.1.1")))
    env = make_env(1)
    app = env.start(**kube_config(env, kube))
    good = {"web": up("web", "10.0.0.1:8080"), "api": up("api", "10.0.1.1:8080")}
    assert env.wait_converged(desired=good)
    kube.apply(opted_in("web", **{f"{P}/weight": "abc"}))
    kube.apply(opted_in("other", **{f"{P}/upstream": "api"}))  # collides with api's name
    kube.apply(slice_of("other-a", "other", endpoints=eps("10.0.9.9")))
    kube.apply(slice_of("api-a", "api", endpoints=eps("10.0.1.2")))
    good["api"] = up("api", "10.0.1.2:8080")
    assert env.wait_converged(desired=good)
    assert eventually(
        lambda: (
            metric(app, "dyups_syncer_source_rejected_total", source="kubernetes", reason="weight")
            == 1
        )
    )
    assert (
        metric(
            app, "dyups_syncer_source_rejected_total", source="kubernetes", reason="name_collision"
        )
        == 1
    )
    rejected = app.sources[0].status()["rejected"]
    assert set(rejected) == {"shop/web", "shop/other"} and "weight" in rejected["shop/web"]


def _free_port(hosts):
    while True:
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for h in hosts[1:]:
                with socket.socket() as s:
                    s.bind((h, port))
            return port
        except OSError:
            continue


def test_proxy_pods_come_and_go(kube, tmp_path):
    hosts = ["127.0.0.2", "127.0.0.3"]
    port = _free_port(hosts)
    sims = [
        DyupsSimulator(host=h, port=port, static=STATIC, read_msg_timeout=0.05).start()
        for h in hosts
    ]
    try:
        kube.apply(opted_in("web"))
        kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1")))
        kube.apply(pod("edge", "nginx-0", ip=hosts[0], labels={"app": "nginx"}))
        cfg = Config.model_validate(
            {
                "sources": [{"type": "kubernetes", "client": {"api_url": kube.url}}],
                "proxies": {
                    "kubernetes": {
                        "namespace": "edge",
                        "label_selector": "app=nginx",
                        "port": port,
                        "read_msg_timeout": 0.05,
                        "client": {"api_url": kube.url},
                    }
                },
                "snapshot_path": str(tmp_path / "snap.json"),
                "debounce": 0,
                "probe_interval": 0.1,
                "listen": "127.0.0.1:0",
            }
        )
        app = App(cfg)
        app.start(serve_http=False)
        try:
            assert sims[0].wait_until(lambda s: "web" in s.upstreams(0), WAIT)
            assert [w.label for w in app.workers] == ["nginx-0"]
            kube.apply(pod("edge", "nginx-1", ip=hosts[1], labels={"app": "nginx"}))
            assert sims[1].wait_until(
                lambda s: "web" in s.upstreams(0) and "web" in s.upstreams(1), WAIT
            )
            assert metric(app, "dyups_syncer_proxy_up", proxy="nginx-1") == 1
            kube.apply(pod("edge", "nginx-0", ip=hosts[0], labels={"app": "nginx"}, ready=False))
            assert eventually(lambda: [w.label for w in app.workers] == ["nginx-1"])
            # its series go with it (a missing series reads as 0 here)
            assert eventually(lambda: metric(app, "dyups_syncer_proxy_up", proxy="nginx-0") == 0)
            assert metric(app, "dyups_syncer_proxy_up", proxy="nginx-1") == 1
            assert "nginx-0" not in app.state()["proxies"]
        finally:
            app.shutdown()
    finally:
        for s in sims:
            s.stop()


def test_leader_fail_over_exactly_one_writes(make_env, kube):
    kube.apply(opted_in("web"))
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1")))
    env = make_env(1)
    le = {
        "enabled": True,
        "namespace": "dyups",
        # Long enough that a loaded machine never lets the lease lapse mid-test (the
        # roles must not swap); the fail-over below is a release, not an expiry.
        "lease_duration": 8.0,
        "renew_deadline": 5.0,
        "retry_period": 0.05,
        "client": {"api_url": kube.url},
    }
    a = env.start(**kube_config(env, kube), leader_election={**le, "identity": "a"})
    b = env.start(**kube_config(env, kube), leader_election={**le, "identity": "b"})
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    assert eventually(lambda: a.elector.is_leader() != b.elector.is_leader())
    leader, follower = (a, b) if a.elector.is_leader() else (b, a)
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.2")))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.2:8080")})
    assert (
        metric(
            follower, "dyups_syncer_requests_total", proxy="p0", method="POST", outcome="applied"
        )
        == 0
    )
    assert (
        metric(leader, "dyups_syncer_leader") == 1 and metric(follower, "dyups_syncer_leader") == 0
    )
    assert follower.workers[0].following
    leader.shutdown()  # releases the lease
    assert eventually(lambda: follower.elector.is_leader())
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.3")))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.3:8080")})
    assert (
        metric(
            follower, "dyups_syncer_requests_total", proxy="p0", method="POST", outcome="applied"
        )
        >= 1
    )
    lease = kube.get("leases", "dyups", "dyups-syncer")
    assert lease["spec"]["holderIdentity"] == follower.elector.identity


def test_namespace_scope_and_lag_from_the_trigger_time(make_env, kube):
    from datetime import UTC, datetime, timedelta

    kube.apply(opted_in("web", ns="shop"))
    kube.apply(opted_in("web", ns="other"))
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1")))
    kube.apply(slice_of("web-a", ns="other", endpoints=eps("10.9.0.1")))
    env = make_env(1)
    app = env.start(
        **kube_config(
            env,
            kube,
            sources=[
                {"type": "kubernetes", "namespaces": ["shop"], "client": {"api_url": kube.url}}
            ],
        )
    )
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    before = metric(app, "dyups_syncer_sync_lag_seconds_sum", proxy="p0")
    changed = (datetime.now(UTC) - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    s = slice_of("web-a", endpoints=eps("10.0.0.2"))
    s["metadata"].setdefault("annotations", {})[
        "endpoints.kubernetes.io/last-change-trigger-time"
    ] = changed
    kube.apply(s)
    assert env.wait_converged(desired={"web": up("web", "10.0.0.2:8080")})
    # measured from when the change happened in the cluster, not when we saw it
    assert eventually(
        lambda: metric(app, "dyups_syncer_sync_lag_seconds_sum", proxy="p0") - before >= 29
    )


def test_kubeconfig_from_the_command_line(tmp_path, kube):
    import yaml

    from syncer.config import load, with_kube_client
    from syncer.sources.kubernetes import api_client

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
            }
        )
    )
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "sources": [{"type": "kubernetes"}],
                "proxies": {"static": [{"url": "http://127.0.0.1:1"}]},
                "snapshot_path": str(tmp_path / "s.json"),
                "leader_election": {"enabled": True},
            }
        )
    )
    cfg = with_kube_client(load(cfg_path, env={}), kubeconfig=kubeconfig, context="fake")
    assert cfg.sources[0].client.kubeconfig == kubeconfig
    assert cfg.leader_election.client.context == "fake"
    api = api_client(cfg.sources[0].client)
    assert api.configuration.host == kube.url
    kube.apply(opted_in("web"))
    from kubernetes import client as k8s

    names = [s.metadata.name for s in k8s.CoreV1Api(api).list_service_for_all_namespaces().items]
    assert names == ["web"]
