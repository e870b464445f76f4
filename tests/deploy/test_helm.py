"""helm/dyups-syncer: rendered with Helm's own engine (helm-python-sdk, offline),
linted, validated against the Kubernetes schemas, yamllint-ed, and the rendered
configuration checked by `dyups-syncer check-config`, in every variant."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    DEPLOY,
    KUBE_VERSION,
    assert_syncer_container,
    by_kind,
    check_config_text,
    containers,
    kube_validate,
    missing,
    one,
    rules,
    run,
    tool,
)

NAMESPACE = "edge-system"
RELEASE = "dyups-syncer"
SIDECAR_IMAGE = {"repository": "registry.example.com/openresty-dyups", "tag": "1.25.3"}
CRDS = {"ServiceMonitor", "PrometheusRule"}

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "consul-static": {
        "replicas": 1,
        "leaderElection": {"enabled": False},
        "source": {
            "type": "consul",
            "consul": {
                "address": "consul.consul.svc:8500",
                "tag": "edge",
                "statuses": ["passing", "warning"],
            },
        },
        "consulTokenSecret": {"name": "consul-token", "key": "token"},
        "proxies": {
            "kubernetes": {"enabled": False},
            "static": [
                {"url": "http://10.0.0.5:8081", "name": "edge-1", "zone": "eu-west-1a"},
                {"url": "http://10.0.0.6:8081", "name": "edge-2", "nginx_workers": 8},
            ],
        },
        "networkPolicy": {
            "extraEgress": [
                {
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                    "ports": [{"port": 8081, "protocol": "TCP"}],
                }
            ]
        },
    },
    "file": {
        "source": {
            "type": "file",
            "file": {
                "upstreams": {
                    "web": {"servers": ["10.0.0.7:8080", {"address": "10.0.0.8:8080", "weight": 3}]}
                }
            },
        }
    },
    "consul-everything": {
        "source": {"type": "consul"},
        "proxies": {
            "kubernetes": {"enabled": False},
            "consul": {
                "enabled": True,
                "service": "nginx",
                "tag": "edge",
                "client": {"address": "consul.consul.svc:8500"},
            },
        },
        "leaderElection": {
            "backend": "consul",
            "consul": {"key": "service/dyups-syncer/leader", "lock_delay": "15s"},
        },
        "networkPolicy": {
            "extraEgress": [
                {
                    "to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
                    "ports": [{"port": 8081, "protocol": "TCP"}],
                }
            ]
        },
    },
    "scoped": {
        "source": {"kubernetes": {"namespaces": ["shop", "blog"], "label_selector": "tier=web"}},
        "proxies": {
            "kubernetes": {
                "namespace": "edge",
                "label_selector": "app=nginx,tier=edge",
                "port": 9000,
            }
        },
    },
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "zones-off": {
        "proxies": {
            "kubernetes": {"zone_label": ""},
            "consul": {"enabled": True, "service": "nginx", "zone_meta": "az"},
        },
        "networkPolicy": {
            "extraEgress": [
                {
                    "to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
                    "ports": [{"port": 8081, "protocol": "TCP"}],
                }
            ]
        },
    },
    "single-pvc": {
        "replicas": 1,
        "leaderElection": {"enabled": False},
        "snapshot": {"persistence": {"enabled": True, "size": "128Mi"}},
    },
    "no-extras": {
        "networkPolicy": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing"},
    },
    "extras": {
        "extraEnv": [{"name": "DYUPS_SYNCER_LOG__LEVEL", "value": "debug"}],
        "extraVolumes": [{"name": "consul-ca", "secret": {"secretName": "consul-ca"}}],
        "extraVolumeMounts": [
            {"name": "consul-ca", "mountPath": "/etc/consul-ca", "readOnly": True}
        ],
        "extraSources": [{"type": "consul", "address": "consul.consul.svc:8500"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
        "podAnnotations": {"example.com/team": "edge"},
        "config": {"policy": "upsert-only", "owned_prefix": "k8s-", "adopt": ["legacy"]},
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
    },
    "more-toggles": {
        "metricsPort": 9200,
        "imagePullSecrets": [{"name": "registry"}],
        "podLabels": {"team": "edge"},
        "priorityClassName": "system-cluster-critical",
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "edge", "operator": "Exists"}]}
                    ]
                }
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "dyups-syncer"}},
            }
        ],
        "service": {"annotations": {"prometheus.io/scrape": "true"}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}, "interval": "15s"},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "networkPolicy": {
            "metricsFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ]
        },
        "leaderElection": {"leaseName": "edge-syncer"},
    },
    "sharded": {"replicas": 3, "leaderElection": {"shards": 6}},
    "sidecar": {"mode": "sidecar", "sidecar": {"proxy": {"image": SIDECAR_IMAGE}}},
    "sidecar-custom": {
        "mode": "sidecar",
        "sidecar": {
            "dyupsPort": 18081,
            "proxy": {
                "image": SIDECAR_IMAGE,
                "replicas": 1,
                "service": {"enabled": False},
                "nginxConf": "events {}\nhttp {\n    server {\n        listen 127.0.0.1:18081;\n        location / { dyups_interface; }\n    }\n}\n",
            },
        },
        "snapshot": {"persistence": {"enabled": True}},
        "source": {"type": "file", "file": {"upstreams": {"web": {"servers": ["10.0.0.7:8080"]}}}},
    },
    "sidecar-monitoring": {
        "mode": "sidecar",
        "sidecar": {"proxy": {"image": SIDECAR_IMAGE}},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
}


def helm() -> Any:
    try:
        import helm_python
    except ImportError:
        missing("the Python package helm-python-sdk")
    return helm_python


def render_files(values: dict[str, Any] | None) -> dict[str, str]:
    with helm().Chart.load(CHART) as chart:
        return dict(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))


def render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    docs = []
    for name, text in render_files(values).items():
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values) for name, values in VARIANTS.items()}


def syncer_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "ConfigMap", RELEASE)["data"]["config.yaml"])


def syncer_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = by_kind(docs, "Deployment")
    return next(c for c in containers(dep) if c["name"] == "dyups-syncer")


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint(variant: str) -> None:
    report = helm().lint(
        CHART,
        VARIANTS[variant],
        strict=True,
        kube_version=f"v{KUBE_VERSION}.0",
        namespace=NAMESPACE,
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_is_valid(
    variant: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[variant]
    unchecked = kube_validate(docs)
    assert set(unchecked) <= CRDS, unchecked


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_config_passes_check_config(
    variant: str, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    cm = one(rendered[variant], "ConfigMap", RELEASE)
    for name, text in cm["data"].items():
        if name != "config.yaml":
            (tmp_path / name).write_text(text)
    check_config_text(cm["data"]["config.yaml"], tmp_path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_output_is_yamllint_clean(variant: str, tmp_path: Path) -> None:
    # What `helm template` prints: each manifest trimmed, after `---` and a `# Source:` line.
    out = []
    for name, text in sorted(render_files(VARIANTS[variant]).items()):
        if name.endswith(".yaml"):
            for manifest in re.split(r"(?m)^---[ \t]*$", text):
                if manifest.strip() and not all(
                    line.lstrip().startswith("#") for line in manifest.strip().splitlines()
                ):
                    out.append(f"---\n# Source: {name}\n{manifest.strip()}\n")
    path = tmp_path / "rendered.yaml"
    path.write_text("".join(out))
    config = Path(__file__).with_name("yamllint.yaml")
    result = run([tool("yamllint"), "-f", "parsable", "-c", str(config), str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_sources_are_yamllint_clean() -> None:
    config = Path(__file__).with_name("yamllint.yaml")
    files = [str(CHART / "Chart.yaml"), str(CHART / "values.yaml")]
    result = run([tool("yamllint"), "-f", "parsable", "-c", str(config), *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_defaults_central(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    c = syncer_container(docs)
    assert_syncer_container(c)
    assert c["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["image"] == "registry.example.com/dyups-syncer:0.1.0"
    assert any(v["name"] == "snapshot" and "emptyDir" in v for v in pod["volumes"])
    config = syncer_config(docs)
    assert config["leader_election"] == {
        "enabled": True,
        "backend": "kubernetes",
        "lease_name": RELEASE,
        "namespace": NAMESPACE,
        "lease_duration": "15s",
        "renew_deadline": "10s",
        "retry_period": "2s",
    }
    assert config["proxies"]["kubernetes"]["namespace"] == NAMESPACE
    assert config["sources"] == [{"type": "kubernetes", "namespaces": []}]
    assert config["listen"] == "0.0.0.0:9105"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule")


def test_defaults_rbac_is_least_privilege(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    assert rules(docs) == {
        ("ClusterRole", "", "services"): {"list", "watch"},
        ("ClusterRole", "", "endpointslices"): {"list", "watch"},
        ("ClusterRole", "", "nodes"): {"list", "watch"},
        ("Role", NAMESPACE, "pods"): {"list", "watch"},
        ("Role", NAMESPACE, f"leases/{RELEASE}"): {"get", "update"},
        ("Role", NAMESPACE, "leases"): {"create"},
    }
    # Nodes (the proxies' zones, read by proxy discovery) have a ClusterRole of their own.
    nodes = one(docs, "ClusterRole", f"{NAMESPACE}-{RELEASE}-nodes")
    assert nodes["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}
    ]
    nodes_binding = one(docs, "ClusterRoleBinding", f"{NAMESPACE}-{RELEASE}-nodes")
    assert nodes_binding["roleRef"]["name"] == nodes["metadata"]["name"]
    assert syncer_config(docs)["proxies"]["kubernetes"]["zone_label"] == (
        "topology.kubernetes.io/zone"
    )
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    for binding in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}
        ]


def test_sharded_rbac_and_config(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """With shards, the Leases are one per shard plus one per replica (named after its
    identity): the Role covers the namespace's Leases, with list and delete."""
    docs = rendered["sharded"]
    assert rules(docs) == {
        ("ClusterRole", "", "services"): {"list", "watch"},
        ("ClusterRole", "", "endpointslices"): {"list", "watch"},
        ("ClusterRole", "", "nodes"): {"list", "watch"},
        ("Role", NAMESPACE, "pods"): {"list", "watch"},
        ("Role", NAMESPACE, "leases"): {"get", "list", "create", "update", "delete"},
    }
    lease_role = one(docs, "Role", f"{RELEASE}-lease")
    assert lease_role["metadata"]["namespace"] == NAMESPACE  # never a ClusterRole
    config = syncer_config(docs)
    assert config["leader_election"]["shards"] == 6
    assert config["leader_election"]["lease_name"] == RELEASE
    assert one(docs, "Deployment")["spec"]["replicas"] == 3
    notes = render_files(VARIANTS["sharded"])[f"{RELEASE}/templates/NOTES.txt"]
    assert f"get leases -l dyups-syncer.io/lease-group={RELEASE}" in notes
    # shards: 1 (the default, or said) keeps the single Lease's least privilege.
    one_shard = render({"leaderElection": {"shards": 1}})
    assert rules(one_shard) == rules(rendered["defaults"])
    assert "shards" not in syncer_config(one_shard)["leader_election"]


def test_scoped_rbac_and_networkpolicy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["scoped"]
    assert rules(docs) == {
        ("Role", "shop", "services"): {"list", "watch"},
        ("Role", "shop", "endpointslices"): {"list", "watch"},
        ("Role", "blog", "services"): {"list", "watch"},
        ("Role", "blog", "endpointslices"): {"list", "watch"},
        ("ClusterRole", "", "nodes"): {"list", "watch"},
        ("Role", "edge", "pods"): {"list", "watch"},
        ("Role", NAMESPACE, f"leases/{RELEASE}"): {"get", "update"},
        ("Role", NAMESPACE, "leases"): {"create"},
    }
    np = one(docs, "NetworkPolicy")
    proxy_rule = next(r for r in np["spec"]["egress"] if r["ports"][0]["port"] == 9000)
    assert proxy_rule["to"] == [
        {
            "podSelector": {"matchLabels": {"app": "nginx", "tier": "edge"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}},
        }
    ]


def test_no_node_rbac_without_zones_from_nodes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["zones-off"]
    config = syncer_config(docs)
    assert config["proxies"]["kubernetes"]["zone_label"] == ""
    assert config["proxies"]["consul"]["zone_meta"] == "az"
    assert ("ClusterRole", "", "nodes") not in rules(docs)
    assert ("Role", NAMESPACE, "pods") in rules(docs)  # proxy discovery itself is on
    assert not [d for d in docs if d["metadata"]["name"].endswith("-nodes")]
    # Nor without Kubernetes proxy discovery at all.
    for variant in ("consul-static", "consul-everything", "sidecar"):
        assert ("ClusterRole", "", "nodes") not in rules(rendered[variant]), variant


def test_defaults_networkpolicy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    np = one(rendered["defaults"], "NetworkPolicy")
    ports = sorted(p["port"] for rule in np["spec"]["egress"] for p in rule["ports"])
    assert ports == [443, 6443, 8081], "the API server and the proxies' dyups port only"
    consul = one(rendered["consul-static"], "NetworkPolicy")
    ports = sorted(p["port"] for rule in consul["spec"]["egress"] for p in rule["ports"])
    assert ports == [53, 53, 443, 6443, 8081, 8500, 8501], (
        "API server, Consul (+ DNS), the static proxies"
    )


def test_consul_static(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["consul-static"]
    config = syncer_config(docs)
    assert config["sources"][0]["type"] == "consul"
    assert "leader_election" not in config
    assert [p["name"] for p in config["proxies"]["static"]] == ["edge-1", "edge-2"]
    assert config["proxies"]["static"][1]["nginx_workers"] == 8
    assert config["proxies"]["static"][0]["nginx_workers"] == 2
    assert config["proxies"]["static"][0]["zone"] == "eu-west-1a"  # for zone-aware upstreams
    env = {e["name"]: e for e in syncer_container(docs)["env"]}
    assert env["CONSUL_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "consul-token",
        "key": "token",
    }
    assert rules(docs) == {}, "no Kubernetes source, no discovery, no Lease: no RBAC"


def test_consul_discovery_and_lock(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["consul-everything"]
    config = syncer_config(docs)
    assert config["proxies"]["consul"]["service"] == "nginx"
    assert config["proxies"]["consul"]["nginx_workers"] == 2
    assert "kubernetes" not in config["proxies"]
    assert config["leader_election"]["backend"] == "consul"
    assert config["leader_election"]["consul"]["key"] == "service/dyups-syncer/leader"
    assert "lease_name" not in config["leader_election"]
    assert rules(docs) == {}, "no Kubernetes source, no pods, no Lease: no RBAC"
    np = one(docs, "NetworkPolicy")
    ports = sorted(p["port"] for rule in np["spec"]["egress"] for p in rule["ports"])
    assert ports == [53, 53, 443, 6443, 8081, 8500, 8501]


def test_file_source(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cm = one(rendered["file"], "ConfigMap", RELEASE)
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["sources"] == [{"type": "file", "path": "upstreams.yaml", "poll_interval": "1s"}]
    assert (
        yaml.safe_load(cm["data"]["upstreams.yaml"])["upstreams"]["web"]["servers"][0]
        == "10.0.0.7:8080"
    )
    assert not any(k[2] in ("services", "endpointslices") for k in rules(rendered["file"]))


def test_single_replica_with_a_persistent_snapshot(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["single-pvc"]
    pvc = one(docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["snapshot"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert not any(k[2].startswith("leases") for k in rules(docs))


def test_toggles_off(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["no-extras"]
    kinds = {d["kind"] for d in docs}
    assert kinds == {"ConfigMap", "Deployment", "Service"}
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_extras(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["extras"]
    c = syncer_container(docs)
    assert {"name": "DYUPS_SYNCER_LOG__LEVEL", "value": "debug"} in c["env"]
    assert {"name": "consul-ca", "mountPath": "/etc/consul-ca", "readOnly": True} in c[
        "volumeMounts"
    ]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "consul-ca", "secret": {"secretName": "consul-ca"}} in pod["volumes"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "edge"
    assert c["resources"]["limits"]["memory"] == "512Mi"
    config = syncer_config(docs)
    assert [s["type"] for s in config["sources"]] == ["kubernetes", "consul"]
    assert config["policy"] == "upsert-only" and config["owned_prefix"] == "k8s-"
    np = one(docs, "NetworkPolicy")
    assert 8500 in [p["port"] for rule in np["spec"]["egress"] for p in rule["ports"]]


def test_more_toggles(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["more-toggles"]
    pod = one(docs, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "edge"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert (
        "nodeAffinity" in pod["spec"]["affinity"]
        and "podAntiAffinity" not in pod["spec"]["affinity"]
    )
    assert pod["spec"]["topologySpreadConstraints"][0]["maxSkew"] == 1
    c = syncer_container(docs)
    assert c["ports"] == [{"name": "metrics", "containerPort": 9200, "protocol": "TCP"}]
    assert syncer_config(docs)["listen"] == "0.0.0.0:9200"
    assert syncer_config(docs)["leader_election"]["lease_name"] == "edge-syncer"
    assert ("Role", NAMESPACE, "leases/edge-syncer") in rules(docs)
    service = one(docs, "Service", f"{RELEASE}-metrics")
    assert service["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert service["spec"]["ports"][0]["port"] == 9200
    assert one(docs, "ServiceMonitor")["metadata"]["labels"]["release"] == "prometheus"
    assert one(docs, "PrometheusRule")["metadata"]["labels"]["release"] == "prometheus"
    np = one(docs, "NetworkPolicy")
    assert np["spec"]["ingress"][0]["ports"] == [{"port": 9200, "protocol": "TCP"}]
    assert np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


def test_sidecar_custom(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["sidecar-custom"]
    assert syncer_config(docs)["proxies"]["static"][0]["url"] == "http://127.0.0.1:18081"
    nginx = one(docs, "ConfigMap", f"{RELEASE}-nginx")["data"]["nginx.conf"]
    assert "listen 127.0.0.1:18081;" in nginx
    assert [d["metadata"]["name"] for d in by_kind(docs, "Service")] == [f"{RELEASE}-metrics"]
    assert one(docs, "PersistentVolumeClaim")
    assert rules(docs) == {}


def test_sidecar(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["sidecar"]
    dep = one(docs, "Deployment")
    assert [c["name"] for c in containers(dep)] == ["nginx", "dyups-syncer"]
    assert containers(dep)[0]["image"] == "registry.example.com/openresty-dyups:1.25.3"
    assert_syncer_container(syncer_container(docs))
    config = syncer_config(docs)
    assert config["proxies"] == {
        "static": [
            {
                "url": "http://127.0.0.1:8081",
                "name": "local",
                "nginx_workers": 2,
                "shm_zone_size": "2m",
                "read_msg_timeout": "1s",
                "dump_path": "/var/lib/dyups-dump/upstreams.conf",
            }
        ]
    }
    assert "leader_election" not in config
    nginx = one(docs, "ConfigMap", f"{RELEASE}-nginx")["data"]["nginx.conf"]
    assert "listen 127.0.0.1:8081;" in nginx and "client_body_in_file_only clean;" in nginx
    assert "proxy_pass http://$upstream;" in nginx
    # the dump file: written by the sidecar, included by nginx, on a shared volume
    assert "include /var/lib/dyups-dump/*.conf;" in nginx
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mounts = {
        c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in pod["containers"]
    }
    assert all(m.get("dump") == "/var/lib/dyups-dump" for m in mounts.values()), mounts
    assert "dump" in {v["name"] for v in pod["volumes"]}
    assert rules(docs) == {
        ("ClusterRole", "", "services"): {"list", "watch"},
        ("ClusterRole", "", "endpointslices"): {"list", "watch"},
    }
    assert not by_kind(docs, "NetworkPolicy")
    assert "TODO(dump-file)" not in (CHART / "templates" / "proxy-deployment.yaml").read_text()


def test_servicemonitor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["monitoring"]
    sm = one(docs, "ServiceMonitor")
    service = one(docs, "Service", f"{RELEASE}-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert service["metadata"]["labels"][sm["spec"]["jobLabel"]] == "dyups-syncer"


def _normalise(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = yaml.safe_load(yaml.safe_dump(groups))
    for group in out:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\s+", " ", rule["expr"]).strip()
    return out


def test_prometheusrule_is_the_alerts_file(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    plain = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]
    central = one(rendered["monitoring"], "PrometheusRule")["spec"]["groups"]
    assert _normalise(central) == _normalise(plain)
    sidecar = one(rendered["sidecar-monitoring"], "PrometheusRule")["spec"]["groups"]
    alerts = [r.get("alert") for g in sidecar for r in g["rules"] if "alert" in r]
    assert "DyupsSyncerNoLeader" not in alerts and "DyupsSyncerDown" in alerts
    for name, groups in (("central", central), ("sidecar", sidecar)):
        path = tmp_path / f"{name}.rules.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}))
        result = run([tool("promtool"), "check", "rules", str(path)])
        assert result.returncode == 0, result.stdout + result.stderr


def test_prometheusrule_thresholds_come_from_values() -> None:
    docs = render(
        {"prometheusRule": {"enabled": True, "syncLagP99Seconds": 2.5, "conflictsIn5m": 7}}
    )
    exprs = {
        r.get("alert"): r["expr"]
        for g in one(docs, "PrometheusRule")["spec"]["groups"]
        for r in g["rules"]
    }
    assert exprs["DyupsSyncerSyncLagHigh"].rstrip().endswith("> 2.5")
    assert exprs["DyupsSyncerConflictsBurst"].rstrip().endswith("> 7")


def test_notes_say_how_to_check_it_works() -> None:
    notes = render_files({})[f"{RELEASE}/templates/NOTES.txt"]
    for text in ("rollout status", "/readyz", "/state", "get lease", f"-n {NAMESPACE}"):
        assert text in notes


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": "two"}, "/replicas"),
        ({"mode": "daemonset"}, "/mode"),
        ({"source": {"type": "etcd"}}, "/source/type"),
        ({"config": {"polcy": "sync"}}, "polcy"),
        ({"config": {"sources": []}}, "sources"),
        ({"config": {"max_delete_fraction": 2}}, "/config/max_delete_fraction"),
        ({"proxies": {"settings": {"shm_zone_size": "2 MB"}}}, "/proxies/settings/shm_zone_size"),
        ({"proxies": {"static": [{"url": "10.0.0.5:8081"}]}}, "/proxies/static/0/url"),
        ({"leaderElection": {"leaseDuration": "soon"}}, "/leaderElection/leaseDuration"),
        ({"image": {"repository": ""}}, "/image/repository"),
        ({"source": {"consul": {"statuses": ["warning"]}}}, "/source/consul/statuses"),
        ({"proxies": {"consul": {"enabled": True}}}, "/proxies/consul/service"),
        ({"leaderElection": {"backend": "etcd"}}, "/leaderElection/backend"),
        ({"leaderElection": {"shards": 0}}, "/leaderElection/shards"),
        ({"leaderElection": {"shards": 257}}, "/leaderElection/shards"),
        ({"leaderElection": {"shards": "4"}}, "/leaderElection/shards"),
    ],
)
def test_schema_rejects_wrong_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"leaderElection": {"enabled": False}},
            "several replicas would write to the same proxies",
        ),
        ({"proxies": {"kubernetes": {"enabled": False}}}, "no proxies"),
        (
            {"proxies": {"consul": {"enabled": True, "service": "nginx"}}},
            "networkPolicy.extraEgress",
        ),
        ({"mode": "sidecar"}, "sidecar.proxy.image.repository"),
        ({"snapshot": {"persistence": {"enabled": True}}}, "needs replicas: 1"),
        (
            {"proxies": {"kubernetes": {"label_selector": "app in (a,b)"}}},
            "networkPolicy.proxyPeers",
        ),
        (
            {"leaderElection": {"backend": "consul", "shards": 4}},
            "leaderElection.shards > 1 needs leaderElection.backend: kubernetes",
        ),
        (
            {"replicas": 1, "leaderElection": {"enabled": False, "shards": 4}},
            "leaderElection.shards > 1 needs leaderElection.enabled: true",
        ),
    ],
)
def test_values_that_cannot_work_together_fail_clearly(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        render(values)


def test_a_static_proxy_zone_that_is_not_a_label_value_is_refused_by_the_schema() -> None:
    values = {
        "proxies": {
            "kubernetes": {"enabled": False},
            "static": [{"url": "http://10.0.0.5:8081", "name": "edge-1", "zone": "eu west;"}],
        }
    }
    with pytest.raises(Exception, match="zone"):
        render(values)
