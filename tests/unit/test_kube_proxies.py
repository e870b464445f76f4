import pytest
from pydantic import ValidationError

from syncer.config import KubernetesProxiesConfig
from syncer.sources.kube_proxies import node_zone, pod_is_proxy, targets_from_pods


def pod(name, ip="10.1.0.5", ready="True", phase="Running", deleting=False):
    meta = {"name": name, "namespace": "edge", "labels": {"app": "nginx"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-25T10:00:00Z"
    return {
        "metadata": meta,
        "status": {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
    }


CFG = KubernetesProxiesConfig(
    namespace="edge", label_selector="app=nginx", port=8081, shm_zone_size="4m", nginx_workers=4
)


def test_only_running_ready_pods_with_an_ip_are_proxies():
    assert pod_is_proxy(pod("a"))
    assert not pod_is_proxy(pod("a", ready="False"))
    assert not pod_is_proxy(pod("a", phase="Pending"))
    assert not pod_is_proxy(pod("a", ip=""))
    assert not pod_is_proxy(pod("a", deleting=True))


def test_targets_carry_the_proxy_settings():
    targets = targets_from_pods(
        {"edge/a": pod("a"), "edge/b": pod("b", ip="fd00::5"), "edge/c": pod("c", ready="False")},
        CFG,
    )
    assert set(targets) == {"a", "b"}
    assert (
        targets["a"].url == "http://10.1.0.5:8081" and targets["b"].url == "http://[fd00::5]:8081"
    )
    assert targets["a"].shm_zone_size == 4 * 1024 * 1024 and targets["a"].nginx_workers == 4
    assert targets["a"].label == "a"


# --- zones ------------------------------------------------------------------------------

ZONE = "topology.kubernetes.io/zone"


def on_node(name, node_name):
    p = pod(name)
    if node_name is not None:
        p["spec"] = {"nodeName": node_name}
    return p


def node(name, **labels):
    return {"metadata": {"name": name, "labels": labels}}


def test_a_node_label_gives_the_zone_if_it_is_a_label_value():
    assert node_zone(node("n1", **{ZONE: "eu-west-1a"}), ZONE) == "eu-west-1a"
    assert node_zone(node("n1", **{ZONE: "a.b_c-1"}), ZONE) == "a.b_c-1"
    assert node_zone(node("n1", zone="a"), ZONE) == ""  # another label
    assert node_zone(node("n1", **{ZONE: "a"}), "") == ""  # lookup off
    for bad in ("eu west", "a\nb", "zone;", "é", "a" * 254, 7, None, ["a"]):
        assert node_zone(node("n1", **{ZONE: bad}), ZONE) == "", bad
    for malformed in ({}, {"metadata": None}, {"metadata": {"labels": ["a"]}}):
        assert node_zone(malformed, ZONE) == ""


def test_targets_take_the_zone_of_their_node():
    pods = {
        "edge/a": on_node("a", "n1"),
        "edge/b": on_node("b", "n2"),
        "edge/c": on_node("c", "n-unknown"),
        "edge/d": on_node("d", None),
    }
    targets = targets_from_pods(pods, CFG, {"n1": "z1", "n2": "z2"})
    assert {k: t.zone for k, t in targets.items()} == {"a": "z1", "b": "z2", "c": "", "d": ""}
    assert {t.zone for t in targets_from_pods(pods, CFG).values()} == {""}  # no zones known
    # A pod whose nodeName is not a string is a proxy without a zone.
    odd = pod("e")
    odd["spec"] = {"nodeName": ["n1"]}
    assert targets_from_pods({"edge/e": odd}, CFG, {"n1": "z1"})["e"].zone == ""


def test_a_configured_zone_wins_over_the_node():
    cfg = CFG.model_copy(update={"zone": "manual"})
    targets = targets_from_pods({"edge/a": on_node("a", "n1")}, cfg, {"n1": "z1"})
    assert targets["a"].zone == "manual"


def test_zone_label_is_a_label_key_or_empty():
    base = {"namespace": "edge", "label_selector": "app=nginx", "port": 8081}
    assert KubernetesProxiesConfig(**base).zone_label == ZONE
    for ok in ("", "zone", "example.com/rack-zone", "failure-domain.beta.kubernetes.io/zone"):
        assert KubernetesProxiesConfig(**base, zone_label=ok).zone_label == ok
    for bad in ("a b", "/zone", "Example.com/zone", "zone/", "a=b", "-zone"):
        with pytest.raises(ValidationError):
            KubernetesProxiesConfig(**base, zone_label=bad)
