"""docs/: the generated configuration reference is current; the metrics reference
names every metric with its type and labels."""

from __future__ import annotations

import re
import sys

from prometheus_client import Counter, Gauge, Histogram

from syncer.metrics import Metrics
from tests.deploy.conftest import ROOT, run


def test_configuration_reference_is_up_to_date() -> None:
    result = run([sys.executable, str(ROOT / "scripts" / "gen_config_reference.py"), "--check"])
    assert result.returncode == 0, (
        result.stderr + "\nregenerate it: python scripts/gen_config_reference.py"
    )


def test_configuration_reference_has_every_field() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    from syncer import config

    for model, prefix in (
        (config.Config, ""),
        (config.ProxyConfig, "proxies.static[]."),
        (config.LeaderElectionConfig, "leader_election."),
        (config.ConsulSourceConfig, "sources[]."),
    ):
        for name in model.model_fields:
            assert f"| `{prefix}{name}` |" in text, f"{prefix}{name} is not documented"
    assert "|  |" not in text, "a field without a description"


def test_metrics_reference_matches_the_code() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r"^\| `(dyups_syncer_[a-z_]+)` \| (\w+) \|([^|]*)\|", text, re.M)
    }
    collectors = [c for c in vars(Metrics()).values() if isinstance(c, Counter | Gauge | Histogram)]
    documented = set()
    for c in collectors:
        kind = type(c).__name__.lower()
        name = c._name + ("_total" if kind == "counter" else "")
        assert name in rows, f"{name} is missing from docs/metrics.md"
        doc_kind, doc_labels = rows[name]
        assert doc_kind == kind, name
        assert re.findall(r"`(\w+)`", doc_labels) == list(c._labelnames), name
        documented.add(name)
    assert set(rows) == documented, f"documented but not in the code: {set(rows) - documented}"


def test_install_script_is_valid_bash() -> None:
    result = run(["bash", "-n", str(ROOT / "scripts" / "install-validators.sh")])
    assert result.returncode == 0, result.stderr
