"""deploy/prometheus and deploy/grafana: the alert rules (promtool), a real scrape
of the running daemon (promtool check metrics), and the Grafana dashboard
(type-checked against Grafana's published schema, @grafana/schema)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncer.app import App
from syncer.config import Config, FileSourceConfig, ProxiesConfig, ProxyConfig
from syncer.metrics import Metrics
from syncer.testing.dyups import DyupsSimulator
from tests.deploy.conftest import DEPLOY, VALIDATORS_DIR, missing, run, tool

RULES = DEPLOY / "prometheus" / "alerts.yaml"
RULES_TEST = DEPLOY / "prometheus" / "alerts_test.yaml"
DASHBOARD = DEPLOY / "grafana" / "dyups-syncer.json"
ALERTS = [
    "DyupsSyncerDown",
    "DyupsSyncerNoLeader",
    "DyupsSyncerProxyDown",
    "DyupsSyncerSyncLagHigh",
    "DyupsSyncerConflictsBurst",
    "DyupsSyncerDriftRepairLoop",
    "DyupsSyncerPlanRefused",
    "DyupsSyncerSourceDown",
    "DyupsSyncerVerifyFailures",
    "DyupsSyncerShardUnheld",
    "DyupsSyncerShardsBlocked",
]
WAIT = 20.0  # upper bound for the daemon to reach a state; never a timing assertion


def metric_families() -> set[str]:
    return {m.name for m in Metrics().registry.collect()}


def referenced_metrics(text: str) -> set[str]:
    names = set(re.findall(r"\bdyups_syncer_[a-z_]+", text))
    return {re.sub(r"_(bucket|count|sum|total|created)$", "", n) for n in names}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


# ------------------------------------------------------------------ alerts
def test_promtool_check_rules() -> None:
    result = run([tool("promtool"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests() -> None:
    result = run([tool("promtool"), "test", "rules", str(RULES_TEST)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_exists_and_has_a_unit_test_that_fires_it() -> None:
    assert [r["alert"] for r in alert_rules()] == ALERTS
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == set(ALERTS)


def test_alerts_use_real_metrics_and_link_the_runbook() -> None:
    families = metric_families()
    assert referenced_metrics(RULES.read_text()) <= families
    runbook = (Path(__file__).parents[2] / "docs" / "runbook.md").read_text()
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert f"## {rule['alert']}" in runbook and anchor == rule["alert"].lower()


# -------------------------------------------------------- a real scrape
@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The /metrics of a running daemon that has synced, repaired a reload and
    read a broken source file, so that most families have samples."""
    workdir = tmp_path_factory.mktemp("daemon")
    upstreams = workdir / "upstreams.yaml"
    upstreams.write_text("upstreams:\n  web:\n    servers: [10.0.0.7:8080, 10.0.0.8:8080]\n")
    sim = DyupsSimulator(workers=2).start()
    config = Config(
        sources=[FileSourceConfig(type="file", path=upstreams, poll_interval=0.05)],
        proxies=ProxiesConfig(static=[ProxyConfig(url=sim.url, name="proxy-1")]),
        snapshot_path=workdir / "snapshot.json",
        listen="127.0.0.1:0",
        debounce=0.0,
        probe_interval=0.1,
    )
    app = App(config)
    try:
        app.start(serve_http=True)
        assert app.http is not None
        host, port = app.http.address
        registry = app.metrics.registry

        def value(sample: str, labels: dict[str, str]) -> float:
            return registry.get_sample_value(sample, labels) or 0.0

        def wait_for(what: str, condition: Any) -> None:
            assert _poll(condition), f"the daemon did not {what} within {WAIT:.0f}s"

        wait_for(
            "sync", lambda: value("dyups_syncer_sync_lag_seconds_count", {"proxy": "proxy-1"}) > 0
        )
        sim.reload()  # nginx loses every dynamic upstream: a drift repair
        wait_for(
            "repair the reload",
            lambda: (
                value("dyups_syncer_drift_repairs_total", {"proxy": "proxy-1", "reason": "lost"})
                > 0
            ),
        )
        upstreams.write_text("upstreams: [this is not a mapping\n")
        wait_for("count the broken file", lambda: _source_errors(registry) > 0)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            yield response.read().decode()
    finally:
        app.shutdown()
        sim.stop()


def _poll(condition: Any) -> bool:
    import threading

    event = threading.Event()
    for _ in range(int(WAIT / 0.05)):
        if condition():
            return True
        event.wait(0.05)
    return bool(condition())


def _source_errors(registry: Any) -> float:
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "dyups_syncer_source_errors"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def test_promtool_check_metrics_on_a_real_scrape(scrape: str) -> None:
    result = run([tool("promtool"), "check", "metrics"], input=scrape)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        "promtool check metrics:\n" + result.stdout + result.stderr
    )


def test_the_scrape_has_every_metric_family(scrape: str) -> None:
    exposed = set(re.findall(r"^# TYPE (dyups_syncer_[a-z_]+) ", scrape, re.M))
    exposed = {re.sub(r"_(total|created)$", "", n) for n in exposed}
    assert metric_families() <= exposed


# ------------------------------------------------------------- dashboard
CHECK_TS = """\
import type { Dashboard, Panel, RowPanel } from '@grafana/schema';
import type { Options as TimeSeriesOptions, FieldConfig as TimeSeriesFieldConfig } from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type { Options as StatOptions } from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';

// Grafana's types use TypeScript enums; JSON holds their values. Lit<> turns
// every string enum into the union of its values and leaves the rest as it is.
type Lit<T> = T extends string
  ? (string extends T ? string : `${T}`)
  : T extends (infer U)[]
    ? Lit<U>[]
    : T extends object
      ? { [K in keyof T]: Lit<T[K]> }
      : T;

// The Prometheus query fields of a target (the dashboard schema leaves targets open).
interface PromTarget {
  refId: string;
  datasource?: { type?: string; uid?: string };
  expr: string;
  legendFormat?: string;
  range?: boolean;
  instant?: boolean;
  editorMode?: 'code' | 'builder';
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  hide?: boolean;
}
// Panel<> types fieldConfig.defaults.custom by its parameter; options are typed here.
type TimeSeriesPanel = Lit<Omit<Panel<TimeSeriesOptions, TimeSeriesFieldConfig>, 'type' | 'targets' | 'options'>>
  & { type: 'timeseries'; targets: PromTarget[]; options: Lit<TimeSeriesOptions> };
type StatPanel = Lit<Omit<Panel<StatOptions, Record<string, never>>, 'type' | 'targets' | 'options'>>
  & { type: 'stat'; targets: PromTarget[]; options: Lit<StatOptions> };
type Row = Lit<RowPanel>;
type CheckedDashboard = Lit<Omit<Dashboard, 'panels'>> & { panels: Array<TimeSeriesPanel | StatPanel | Row> };

export const dashboard: CheckedDashboard = DASHBOARD;
"""


def tsc(dashboard_json: str, workdir: Path) -> Any:
    node_modules = VALIDATORS_DIR / "node" / "node_modules"
    compiler = node_modules / ".bin" / "tsc"
    if not compiler.exists() or not (node_modules / "@grafana" / "schema").exists():
        missing(f"tsc and @grafana/schema in {node_modules.parent}")
    (workdir / "node_modules").symlink_to(node_modules)
    (workdir / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True,
                    "noEmit": True,
                    "target": "es2020",
                    "module": "esnext",
                    "moduleResolution": "bundler",
                    "skipLibCheck": True,
                    "types": [],
                },
                "files": ["check.ts"],
            }
        )
    )
    (workdir / "check.ts").write_text(CHECK_TS.replace("DASHBOARD", dashboard_json.strip()))
    return run([str(compiler), "-p", str(workdir)])


def test_dashboard_validates_against_grafanas_schema(tmp_path: Path) -> None:
    result = tsc(DASHBOARD.read_text(), tmp_path)
    assert result.returncode == 0, "the dashboard does not fit @grafana/schema:\n" + result.stdout


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (
            ("panels", 1, "options", "colorMode"),
            "rainbow",
            "rainbow",
        ),  # not one of the enum's values
        (("graphTooltipp",), 1, "graphTooltipp"),  # an unknown key
        (("panels", 7, "fieldConfig", "defaults", "custom", "drawStyle"), "zigzag", "zigzag"),
        (("panels", 7, "options", "legend", "placement"), "left", "left"),
    ],
)
def test_schema_check_catches_a_wrong_dashboard(
    path: tuple[Any, ...], value: Any, error: str, tmp_path: Path
) -> None:
    broken = json.loads(DASHBOARD.read_text())
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    result = tsc(json.dumps(broken, indent=2), tmp_path)
    assert result.returncode != 0 and error in result.stdout, result.stdout


def test_dashboard_covers_what_an_operator_needs() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert referenced_metrics(exprs) <= metric_families()
    for needed in (
        "histogram_quantile(0.5, sum by (proxy, le) (rate(dyups_syncer_sync_lag_seconds_bucket",
        "histogram_quantile(0.99, sum by (proxy, le) (rate(dyups_syncer_sync_lag_seconds_bucket",
        "dyups_syncer_conflicts_total",
        "sum by (method, outcome) (rate(dyups_syncer_requests_total",
        "dyups_syncer_drift_repairs_total",
        "dyups_syncer_verify_failures_total",
        "dyups_syncer_proxy_up",
        "dyups_syncer_upstreams_desired",
        "dyups_syncer_servers_desired",
        "dyups_syncer_source_up",
        "dyups_syncer_source_rejected_total",
        "dyups_syncer_leader",
    ):
        assert needed in exprs, needed
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "job"}
