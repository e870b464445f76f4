"""deploy/: the kustomize install (central), the example proxies, the sidecar
example and the systemd unit. Rendered with `kubectl kustomize` (what
`kubectl apply -k` applies), validated against the Kubernetes schemas."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    DEPLOY,
    assert_syncer_container,
    by_kind,
    check_config_text,
    containers,
    kube_validate,
    kustomize,
    one,
    rules,
    run,
    tool,
)

KUSTOMIZATIONS = ["", "nginx", "sidecar"]
YAMLLINT_CONFIG = Path(__file__).with_name("yamllint.yaml")


@pytest.fixture(scope="module")
def central() -> list[dict[str, Any]]:
    return kustomize(DEPLOY)


@pytest.mark.parametrize("sub", KUSTOMIZATIONS)
def test_every_object_is_valid(sub: str) -> None:
    docs = kustomize(DEPLOY / sub)
    assert docs
    assert kube_validate(docs) == []


def test_validator_catches_a_typo() -> None:
    """The strict schemas reject an unknown field (so the test above means something)."""
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPrt": 80}]},
    }
    with pytest.raises(BaseException, match=r"targetPrt|not valid"):
        kube_validate([bad])


def test_optional_servicemonitor_component(tmp_path: Path) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    kustomization = copy / "kustomization.yaml"
    text = kustomization.read_text()
    assert "# components:\n#   - servicemonitor\n" in text
    kustomization.write_text(
        text.replace("# components:\n#   - servicemonitor\n", "components:\n  - servicemonitor\n")
    )
    docs = kustomize(copy)
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["namespace"] == "dyups-syncer"
    service = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert kube_validate(docs) == ["ServiceMonitor"]  # a CRD: checked by the asserts above


def test_optional_sharding_component(
    tmp_path: Path, central: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    kustomization = copy / "kustomization.yaml"
    text = kustomization.read_text()
    assert "# components:\n#   - servicemonitor\n#   - sharding\n" in text
    kustomization.write_text(
        text.replace(
            "# components:\n#   - servicemonitor\n#   - sharding\n",
            "components:\n  - sharding\n",
        )
    )
    docs = kustomize(copy)
    assert kube_validate(docs) == []
    assert rules(docs) == {
        ("ClusterRole", "", "services"): {"list", "watch"},
        ("ClusterRole", "", "endpointslices"): {"list", "watch"},
        ("ClusterRole", "", "nodes"): {"list", "watch"},
        ("Role", "dyups-syncer", "pods"): {"list", "watch"},
        ("Role", "dyups-syncer", "leases"): {"get", "list", "create", "update", "delete"},
    }
    # Everything else is the central install, unchanged.
    changed = {(d["kind"], d["metadata"]["name"]) for d in docs if d not in central}
    assert changed == {("Role", "dyups-syncer"), ("Deployment", "dyups-syncer")}
    (c,) = containers(one(docs, "Deployment"))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DYUPS_SYNCER_LEADER_ELECTION__SHARDS"] == "4"
    # The configuration with that override is valid.
    monkeypatch.setenv("DYUPS_SYNCER_LEADER_ELECTION__SHARDS", "4")
    text = one(docs, "ConfigMap", "dyups-syncer")["data"]["config.yaml"]
    check_config_text(text, tmp_path)


def test_another_namespace_moves_everything(tmp_path: Path) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    kustomization = copy / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text().replace("namespace: dyups-syncer", "namespace: infra", 1)
    )
    docs = kustomize(copy)
    assert one(docs, "Namespace")["metadata"]["name"] == "infra"
    for doc in docs:
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "infra", doc["kind"]
        for subject in doc.get("subjects", []):
            assert subject["namespace"] == "infra", doc["kind"]


def test_central_configmap_config_passes_check_config(
    central: list[dict[str, Any]], tmp_path: Path
) -> None:
    text = one(central, "ConfigMap", "dyups-syncer")["data"]["config.yaml"]
    out = check_config_text(text, tmp_path)
    assert "ok" in out
    config = yaml.safe_load(text)
    assert config["leader_election"]["enabled"] is True
    assert config["listen"].startswith("0.0.0.0:")
    assert config["snapshot_path"].startswith("/var/lib/dyups-syncer/")
    namespace = one(central, "Namespace")["metadata"]["name"]
    assert config["proxies"]["kubernetes"]["namespace"] == namespace


def test_sidecar_configmap_config_passes_check_config(tmp_path: Path) -> None:
    docs = kustomize(DEPLOY / "sidecar")
    text = one(docs, "ConfigMap", "dyups-syncer-sidecar")["data"]["config.yaml"]
    check_config_text(text, tmp_path)
    config = yaml.safe_load(text)
    assert [p["url"] for p in config["proxies"]["static"]] == ["http://127.0.0.1:8081"]
    assert "kubernetes" not in config["proxies"]
    assert not config.get("leader_election", {}).get("enabled")
    # The dump file goes to the volume nginx includes it from.
    dump = config["proxies"]["static"][0]["dump_path"]
    dep = one(docs, "Deployment")
    mounts = {
        c["name"]: {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        for c in dep["spec"]["template"]["spec"]["containers"]
    }
    dump_dir = str(Path(dump).parent)
    assert {name: m.get("dump") for name, m in mounts.items()} == {n: dump_dir for n in mounts}
    nginx_conf = "".join(one(docs, "ConfigMap", "dyups-proxy-nginx")["data"].values())
    assert f"include {dump_dir}/*.conf;" in nginx_conf


def test_central_deployment(central: list[dict[str, Any]]) -> None:
    dep = one(central, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (c,) = containers(dep)
    assert_syncer_container(c)
    assert c["image"] == "registry.example.com/dyups-syncer:0.1.0"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["snapshot"]
    assert pod["serviceAccountName"] == one(central, "ServiceAccount")["metadata"]["name"]
    pdb = one(central, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    service = one(central, "Service")
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]


def test_central_rbac_is_least_privilege(central: list[dict[str, Any]]) -> None:
    assert rules(central) == {
        ("ClusterRole", "", "services"): {"list", "watch"},
        ("ClusterRole", "", "endpointslices"): {"list", "watch"},
        ("ClusterRole", "", "nodes"): {"list", "watch"},
        ("Role", "dyups-syncer", "pods"): {"list", "watch"},
        ("Role", "dyups-syncer", "leases/dyups-syncer"): {"get", "update"},
        ("Role", "dyups-syncer", "leases"): {"create"},
    }
    config = yaml.safe_load(one(central, "ConfigMap", "dyups-syncer")["data"]["config.yaml"])
    assert config["leader_election"]["lease_name"] == "dyups-syncer"
    # Nodes (for the proxies' zones) have a ClusterRole of their own: nothing else in it,
    # and it goes with proxy discovery reading the node label.
    assert config["proxies"]["kubernetes"]["zone_label"]
    nodes = one(central, "ClusterRole", "dyups-syncer-nodes")
    assert nodes["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}
    ]
    nodes_binding = one(central, "ClusterRoleBinding", "dyups-syncer-nodes")
    assert nodes_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "dyups-syncer-nodes",
    }
    sa = one(central, "ServiceAccount")["metadata"]
    for binding in by_kind(central, "RoleBinding") + by_kind(central, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]


def test_central_networkpolicy(central: list[dict[str, Any]]) -> None:
    np = one(central, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = sorted(p["port"] for rule in np["spec"]["egress"] for p in rule["ports"])
    # API server, Consul, the proxies' dyups port: nothing else.
    assert egress_ports == [443, 6443, 8081, 8500, 8501]
    config = yaml.safe_load(one(central, "ConfigMap", "dyups-syncer")["data"]["config.yaml"])
    proxy_rule = next(
        r
        for r in np["spec"]["egress"]
        if r["ports"][0]["port"] == config["proxies"]["kubernetes"]["port"]
    )
    selector = dict(
        kv.split("=") for kv in config["proxies"]["kubernetes"]["label_selector"].split(",")
    )
    assert proxy_rule["to"][0]["podSelector"]["matchLabels"] == selector
    assert [p["port"] for p in np["spec"]["ingress"][0]["ports"]] == [9105]


def test_example_proxies_match_the_central_config(central: list[dict[str, Any]]) -> None:
    docs = kustomize(DEPLOY / "nginx")
    config = yaml.safe_load(one(central, "ConfigMap", "dyups-syncer")["data"]["config.yaml"])
    discovery = config["proxies"]["kubernetes"]
    dep = one(docs, "Deployment")
    assert dep["metadata"]["namespace"] == discovery["namespace"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dict(kv.split("=") for kv in discovery["label_selector"].split(","))
    assert selector.items() <= labels.items()
    nginx_conf = one(docs, "ConfigMap", "dyups-proxy-nginx")["data"]["nginx.conf"]
    assert f"listen {discovery['port']};" in nginx_conf
    assert "dyups_interface;" in nginx_conf and "client_body_in_file_only clean;" in nginx_conf
    assert "proxy_pass http://$upstream;" in nginx_conf
    assert f"worker_processes {discovery['nginx_workers']};" in nginx_conf
    # Only the syncer reaches the dyups port.
    np = one(docs, "NetworkPolicy")
    dyups_rule = next(
        r for r in np["spec"]["ingress"] if r["ports"][0]["port"] == discovery["port"]
    )
    syncer_labels = one(central, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert dyups_rule["from"][0]["podSelector"]["matchLabels"].items() <= syncer_labels.items()


def test_sidecar_example(tmp_path: Path) -> None:
    docs = kustomize(DEPLOY / "sidecar")
    dep = one(docs, "Deployment")
    names = [c["name"] for c in containers(dep)]
    assert names == ["nginx", "dyups-syncer"]
    assert_syncer_container(containers(dep)[1])
    nginx_conf = one(docs, "ConfigMap", "dyups-proxy-nginx")["data"]["nginx.conf"]
    assert "listen 127.0.0.1:8081;" in nginx_conf, "the dyups interface stays inside the pod"
    assert "client_body_in_file_only clean;" in nginx_conf
    assert "proxy_pass http://$upstream;" in nginx_conf
    # Only the source's RBAC: no pods, no Lease.
    assert rules(docs) == {
        ("ClusterRole", "", "services"): {"list", "watch"},
        ("ClusterRole", "", "endpointslices"): {"list", "watch"},
    }


def test_yaml_is_lint_clean() -> None:
    files = [str(p) for p in DEPLOY.rglob("*.yaml")]
    result = run([tool("yamllint"), "-f", "parsable", "-c", str(YAMLLINT_CONFIG), *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_unit_and_config(tmp_path: Path) -> None:
    systemd = DEPLOY / "systemd"
    check_config_text((systemd / "config.yaml").read_text(), tmp_path)
    fleet = (systemd / "config-fleet.yaml").read_text()
    check_config_text(fleet, tmp_path, "config-fleet.yaml")
    assert yaml.safe_load(fleet)["leader_election"]["backend"] == "consul"
    config = yaml.safe_load((systemd / "config.yaml").read_text())
    assert config["sources"][0]["type"] == "consul"
    unit = (systemd / "dyups-syncer.service").read_text()
    assert (
        "ExecStart=/opt/dyups-syncer/bin/dyups-syncer run -c /etc/dyups-syncer/config.yaml" in unit
    )
    assert "StateDirectory=dyups-syncer" in unit
    assert config["snapshot_path"].startswith("/var/lib/dyups-syncer/")
    # systemd's own check, with the venv's real executable standing in for /opt.
    exe = shutil.which("dyups-syncer")
    assert exe, "dyups-syncer must be installed (pip install -e .)"
    copy = tmp_path / "dyups-syncer.service"
    copy.write_text(unit.replace("/opt/dyups-syncer/bin/dyups-syncer", exe))
    result = run([tool("systemd-analyze"), "verify", str(copy)])
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "dyups-syncer.service" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
