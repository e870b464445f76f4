from syncer.config import KubernetesProxiesConfig
from syncer.sources.kube_proxies import pod_is_proxy, targets_from_pods


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
