"""The shipped Prometheus rules and Grafana dashboard: promtool checks and unit tests, dashboard shape."""

from __future__ import annotations

import json
import re

from tests.support.observability import DASHBOARD, RULES, panel_queries, promtool


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULES.with_name("modq-rules.test.yml")))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_rule_has_a_unit_test() -> None:
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    tested = set(re.findall(r"alertname: (\w+)", RULES.with_name("modq-rules.test.yml").read_text()))
    assert alerts and alerts == tested


def test_dashboard_has_a_stable_uid_and_a_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "modq-overview"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert all(expr.count("modq") for _, expr in panel_queries())
