"""ops/: the alert rules pass promtool's check and their unit tests; each alert has a runbook;
the Grafana dashboard is what its generator writes, its queries parse, and every metric the
queries and alerts name is one the appliance exports."""

import importlib.util
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import yaml
from fastapi.testclient import TestClient

from appliance.app.dashboard_view import dashboard_ports
from appliance.domain.accounts import Role
from appliance.store.account_ledger import AccountLedger
from appliance.store.db import create_db_engine, upgrade
from appliance.web.app import create_app
from tests.support.services import missing_service
from tests.support.settings import make_settings

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\bappliance_[a-z_]+\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        missing_service("promtool (Debian package prometheus) is not installed")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
    )


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", OPS / "grafana" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alert_rules() -> list[dict[str, object]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def panel_queries() -> list[str]:
    board = json.loads((OPS / "grafana" / "appliance.json").read_text())
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(OPS / "prometheus" / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tests = yaml.safe_load((OPS / "prometheus" / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case.get("exp_alerts")}  # fmt: skip
    assert fired == {rule["alert"] for rule in alert_rules()}  # every alert shown to fire


def test_every_alert_has_a_runbook() -> None:
    for rule in alert_rules():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        runbook = ROOT / annotations["runbook"]
        assert runbook.exists(), rule["alert"]
        text = runbook.read_text()
        assert text.startswith(f"# {rule['alert']}\n")
        assert "**Means:**" in text


def test_the_grafana_dashboard_is_generated_and_its_queries_parse(tmp_path: Path) -> None:
    assert (OPS / "grafana" / "appliance.json").read_text() == generator().render(), (
        "ops/grafana/appliance.json is stale: run .venv/bin/python ops/grafana/generate.py"
    )
    rules = {"groups": [{"name": "grafana-panels", "rules": [
        {"record": f"grafana:panel_query:{n}", "expr": expr}
        for n, expr in enumerate(panel_queries())
    ]}]}  # fmt: skip
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    broken = {"groups": [{"name": "typo", "rules": [
        {"record": "grafana:panel_query:typo", "expr": "sum(rate(appliance_jobs[5m]"},
    ]}]}  # fmt: skip
    path.write_text(yaml.safe_dump(broken))
    assert promtool("check", "rules", str(path)).returncode != 0  # a typo fails


def exported_metric_names(tmp_path: Path) -> set[str]:
    """Every series name the appliance's /metrics exposes, from a real scrape."""
    settings = make_settings(
        tmp_path, {"inference": {"repository": str(ROOT / "model_repository"), "threads": 1}}
    )
    engine = create_db_engine(settings.database.url)
    upgrade(engine)
    accounts = AccountLedger(engine)
    accounts.add("prometheus", "a long enough password", Role.VIEWER, datetime.now(UTC), "test")
    token = accounts.create_token("prometheus", "scrape", datetime.now(UTC), "test")
    app = create_app(settings.dashboard, dashboard_ports(settings, engine))
    text = TestClient(app, headers={"Authorization": f"Bearer {token}"}).get("/metrics").text
    names = set(re.findall(r"^([a-z_:]+)[{ ]", text, re.MULTILINE))  # samples
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):  # without samples
        base = name.removesuffix("_total")
        names.update(f"{base}{suffix}" for suffix in suffixes.get(kind, ("",)))
    return names


def test_dashboard_and_alerts_name_only_metrics_the_appliance_exports(tmp_path: Path) -> None:
    exported = exported_metric_names(tmp_path)
    assert "appliance_stage_seconds_bucket" in exported
    named = set()
    for expr in [*panel_queries(), *(str(rule["expr"]) for rule in alert_rules())]:
        named.update(METRIC.findall(expr))
    assert named, "no appliance metric in the queries"
    assert named - exported == set()
    assert {"appliance_jobs", "appliance_destination_up"} <= named
