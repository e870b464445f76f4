"""The daemon with the Kubernetes source, proxy discovery and leader election, against
the fake API server (real wire protocol, real client library) and simulated proxies."""

from __future__ import annotations

import socket
import threading

import pytest

from syncer.app import App
from syncer.config import Config
from syncer.model import Server, Upstream
from syncer.testing.dyups import DyupsSimulator
from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.kube_objects import endpoint, endpoint_slice, pod, service

from .conftest import STATIC, WAIT, eventually, metric, roles, zoned_proxies

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


def pod_discovery_cfg(kube, port, tmp_path):
    """A syncer whose upstreams and proxies (pods app=nginx in edge) both come from `kube`."""
    return Config.model_validate(
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


def test_a_changed_service_is_parsed_again_and_kept_for_the_next_slice_events(make_env, kube):
    """Slice events reuse the Service's parsed annotations while it is unchanged; a
    change of the Service applies at once and to every later slice event."""
    kube.apply(opted_in("web"))
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1")))
    env = make_env(1)
    env.start(**kube_config(env, kube))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})

    def weighted(weight, *ips):
        return Upstream("web", tuple(Server(ip, 8080, weight=weight) for ip in ips))

    kube.apply(opted_in("web", **{f"{P}/weight": "5"}))
    assert env.wait_converged(desired={"web": weighted(5, "10.0.0.1")})
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1", "10.0.0.2")))
    assert env.wait_converged(desired={"web": weighted(5, "10.0.0.1", "10.0.0.2")})
    kube.apply(opted_in("web"))
    assert env.wait_converged(desired={"web": weighted(1, "10.0.0.1", "10.0.0.2")})


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
        cfg = pod_discovery_cfg(kube, port, tmp_path)
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


# --- proxy zones from their nodes --------------------------------------------------------

ZONE = "topology.kubernetes.io/zone"


def node(name, zone=None):
    """A core/v1 Node as the kubelet registers it (the fields read here: labels)."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if zone is not None:
        labels[ZONE] = zone
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {
            "addresses": [{"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }


class RecordingLog:
    """A structlog-like logger that keeps (level, event, context) records."""

    def __init__(self, records=None, **context):
        self.records = [] if records is None else records
        self.context = context

    def bind(self, **context):
        return RecordingLog(self.records, **{**self.context, **context})

    def _record(self, level, event, **kwargs):
        self.records.append((level, event, {**self.context, **kwargs}))

    def debug(self, event, **kwargs):
        self._record("debug", event, **kwargs)

    def info(self, event, **kwargs):
        self._record("info", event, **kwargs)

    def warning(self, event, **kwargs):
        self._record("warning", event, **kwargs)

    def error(self, event, **kwargs):
        self._record("error", event, **kwargs)


def test_a_proxy_takes_the_zone_of_its_node_and_follows_its_label(kube, tmp_path):
    host = "127.0.0.2"
    port = _free_port([host])
    sim = DyupsSimulator(host=host, port=port, static=STATIC, read_msg_timeout=0.05).start()
    try:
        kube.apply(opted_in("web"))
        kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1")))
        kube.apply(node("node-a", zone="a"))
        kube.apply(node("node-b", zone="b"))
        kube.apply(pod("edge", "nginx-0", ip=host, labels={"app": "nginx"}, node="node-a"))
        cfg = pod_discovery_cfg(kube, port, tmp_path)
        app = App(cfg)
        app.start(serve_http=False)

        def zones():
            return {w.label: w.s.zone for w in app.workers}

        try:
            assert sim.wait_until(lambda s: "web" in s.upstreams(0), WAIT)
            # The first worker already has its zone: the pods were listed after the nodes.
            assert zones() == {"nginx-0": "a"}
            first = app.workers[0]
            (nodes_list,) = [r for r in kube.requests if (r.verb, r.resource) == ("list", "nodes")]
            assert nodes_list.query["labelSelector"] == ZONE  # only the nodes with the label

            kube.patch_labels("nodes", "", "node-a", {ZONE: "c"})
            assert eventually(lambda: zones() == {"nginx-0": "c"})
            # Re-targeted: a new worker with the new zone, whose first round is a full
            # reconcile, and the proxy keeps its upstreams.
            (second,) = app.workers
            assert second is not first
            assert eventually(second.reconciled_once.is_set)
            assert "web" in sim.upstreams(0)

            kube.patch_labels("nodes", "", "node-b", {ZONE: "d"})  # another node: no change
            kube.patch_labels("nodes", "", "node-a", {ZONE: "bad value"})  # not a label value
            assert eventually(lambda: zones() == {"nginx-0": ""})
            kube.patch_labels("nodes", "", "node-a", {ZONE: "a"})
            assert eventually(lambda: zones() == {"nginx-0": "a"})
            kube.delete("nodes", "", "node-a")
            assert eventually(lambda: zones() == {"nginx-0": ""})
        finally:
            app.shutdown()
    finally:
        sim.stop()


def _discovery(kube, log, updates, **settings):
    from syncer.config import KubernetesProxiesConfig
    from syncer.sources.kube_proxies import ProxyDiscovery
    from syncer.sources.kubernetes import api_client

    cfg = KubernetesProxiesConfig(
        namespace="edge",
        label_selector="app=nginx",
        port=8081,
        client={"api_url": kube.url},
        **settings,
    )
    return ProxyDiscovery(
        cfg=cfg,
        api=api_client(cfg.client),
        update=lambda group, targets: updates.append(targets),
        log=log,
    )


def test_nodes_that_cannot_be_read_leave_proxies_without_a_zone(kube, monkeypatch):
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    forbidden = threading.Event()
    forbidden.set()
    node_calls = []
    real_list_node = k8s.CoreV1Api.list_node

    def list_node(self, **kwargs):
        node_calls.append(kwargs)
        if forbidden.is_set():  # as without RBAC for nodes
            raise ApiException(status=403, reason="Forbidden")
        return real_list_node(self, **kwargs)

    monkeypatch.setattr(k8s.CoreV1Api, "list_node", list_node)
    kube.apply(node("node-a", zone="a"))
    kube.apply(pod("edge", "nginx-0", ip="10.1.0.5", labels={"app": "nginx"}, node="node-a"))
    log, updates = RecordingLog(), []
    discovery = _discovery(kube, log, updates)
    discovery.start()
    try:
        assert eventually(lambda: updates and discovery.synced)
        assert {k: t.zone for k, t in updates[-1].items()} == {"nginx-0": ""}
        assert eventually(lambda: len(node_calls) >= 3)  # retried...
        warnings = [(e, ctx) for level, e, ctx in log.records if level == "warning"]
        assert [e for e, _ in warnings] == ["node_zones_unavailable"]  # ...logged once
        assert warnings[0][1]["error"] == "HTTP 403: Forbidden"

        forbidden.clear()  # RBAC granted: the next retry lists the nodes
        assert eventually(lambda: updates[-1]["nginx-0"].zone == "a")
        assert ("info", "node_zones_available") in [(lvl, e) for lvl, e, _ in log.records]
    finally:
        discovery.stop()


def test_the_node_watch_holds_only_the_name_and_zone_of_each_node(kube):
    """A whole Node (its status lists every image on it) is tens of KiB, and the watch
    holds every labelled node of the cluster: it keeps what it reads, from the list
    and from watch events alike."""
    big = node("node-a", zone="a")
    big["status"]["images"] = [
        {"names": [f"registry/img-{i}:v1"], "sizeBytes": i} for i in range(500)
    ]
    kube.apply(big)
    kube.apply(pod("edge", "nginx-0", ip="10.1.0.5", labels={"app": "nginx"}, node="node-a"))
    updates = []
    discovery = _discovery(kube, RecordingLog(), updates)
    discovery.start()
    try:
        assert eventually(lambda: updates and updates[-1]["nginx-0"].zone == "a")
        summary = {"metadata": {"name": "node-a", "labels": {ZONE: "a"}}}
        assert discovery.nodes.objects == {"/node-a": summary}
        kube.apply(node("node-b", zone="b"))  # a watch event
        assert eventually(lambda: "/node-b" in discovery.nodes.objects)
        assert discovery.nodes.objects["/node-b"] == {
            "metadata": {"name": "node-b", "labels": {ZONE: "b"}}
        }
        kube.patch_labels("nodes", "", "node-a", {ZONE: "c"})
        assert eventually(lambda: updates[-1]["nginx-0"].zone == "c")
    finally:
        discovery.stop()


@pytest.mark.parametrize("settings", [{"zone_label": ""}, {"zone": "manual"}])
def test_nodes_are_not_read_when_no_zone_comes_from_them(kube, settings):
    kube.apply(node("node-a", zone="a"))
    kube.apply(pod("edge", "nginx-0", ip="10.1.0.5", labels={"app": "nginx"}, node="node-a"))
    updates = []
    discovery = _discovery(kube, RecordingLog(), updates, **settings)
    discovery.start()
    try:
        assert eventually(lambda: updates)
        assert updates[-1]["nginx-0"].zone == settings.get("zone", "")
        assert discovery.nodes is None
        assert not [r for r in kube.requests if r.resource == "nodes"]
    finally:
        discovery.stop()


# ---------------------------------------------------------------- traffic policies


def test_a_zone_aware_service_gives_each_proxy_its_zone_as_primaries(make_env, kube):
    kube.apply(opted_in("web", **{f"{P}/zone-aware": "true"}))
    kube.apply(
        slice_of(
            "web-a",
            endpoints=[
                endpoint("10.0.1.1", zone="a"),
                endpoint("10.0.1.2", zone="a"),
                endpoint("10.0.2.1", zone="b"),
                endpoint("10.0.2.2", zone="b"),
            ],
        )
    )
    env = make_env(3)
    env.start(**kube_config(env, kube), proxies=zoned_proxies(env, ["a", "b", ""]))
    a = {"10.0.1.1:8080", "10.0.1.2:8080"}
    b = {"10.0.2.1:8080", "10.0.2.2:8080"}

    def split(local, remote):
        return {**dict.fromkeys(local, "primary"), **dict.fromkeys(remote, "backup")}

    assert env.sims[0].wait_until(lambda s: roles(s, "web") == split(a, b), WAIT)
    assert env.sims[1].wait_until(lambda s: roles(s, "web") == split(b, a), WAIT)
    # a proxy without a zone gets the upstream as the source gives it
    assert env.sims[2].wait_until(lambda s: roles(s, "web") == split(a | b, ()), WAIT)

    # The annotation goes: every proxy gets every endpoint as primary again.
    kube.apply(opted_in("web"))
    for sim in env.sims:
        assert sim.wait_until(lambda s: roles(s, "web") == split(a | b, ()), WAIT)


def test_a_terminating_endpoint_drains_as_backup_then_goes(make_env, kube):
    drains = {f"{P}/drain-as-backup": "true", f"{P}/drain-seconds": "3s"}
    kube.apply(opted_in("web", **drains))
    kube.apply(slice_of("web-a", endpoints=eps("10.0.0.1", "10.0.0.2")))
    env = make_env(1)
    env.start(**kube_config(env, kube))
    (sim,) = env.sims
    both = {"10.0.0.1:8080": "primary", "10.0.0.2:8080": "primary"}
    assert sim.wait_until(lambda s: roles(s, "web") == both, WAIT)
    kube.apply(
        slice_of(
            "web-a",
            endpoints=[
                *eps("10.0.0.1"),
                *eps("10.0.0.2", ready=False, serving=True, terminating=True),
            ],
        )
    )
    draining = {"10.0.0.1:8080": "primary", "10.0.0.2:8080": "backup"}
    assert sim.wait_until(lambda s: roles(s, "web") == draining, WAIT)
    # drain_seconds later it is gone, though the endpoint is still terminating
    assert sim.wait_until(lambda s: roles(s, "web") == {"10.0.0.1:8080": "primary"}, WAIT)
