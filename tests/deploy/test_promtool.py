"""Alert rules, dashboard and autoscaler queries, checked by the real promtool (Debian's prometheus 2.42)."""

from __future__ import annotations

import json
import re

import yaml

from tests.deploy import promql, render_prometheusrule
from tests.deploy.tools import ALERT_RULES, ALERT_TESTS, DASHBOARD, run, tool

REQUIRED_DASHBOARD_METRICS = {
    "tsumugi_requests_total",
    "tsumugi_time_to_first_token_seconds_bucket",
    "tsumugi_inter_token_latency_seconds_bucket",
    "tsumugi_request_duration_seconds_bucket",
    "tsumugi_completion_tokens_total",
    "tsumugi_requests_in_flight",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:generation_tokens_total",
}


def promtool(*args: str):
    return run([tool("promtool"), *args], timeout=120)


def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(promql.alert_expressions())} rules found" in result.stdout


def test_alert_unit_tests_pass():
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for alert in promql.alert_expressions():
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in mine), f"{alert}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{alert}: no test where it stays quiet"


def test_unit_tests_can_fail(tmp_path):
    """promtool test rules really compares: a wrong expected label fails the run."""
    (tmp_path / "alerts.yml").write_text(ALERT_RULES.read_text())
    broken = ALERT_TESTS.read_text().replace(
        "severity: critical, job: tsumugi, instance", "severity: info, job: x, instance"
    )
    (tmp_path / "alerts.test.yml").write_text(broken)
    result = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_prometheusrule_carries_exactly_the_alert_rules():
    """One source of truth: k8s/base/prometheusrule.yaml is generated from deploy/prometheus/alerts.yml."""
    committed = render_prometheusrule.PROMETHEUS_RULE.read_text()
    assert committed == render_prometheusrule.render(), "run tests/deploy/render_prometheusrule.py"
    assert yaml.safe_load(committed)["spec"]["groups"] == yaml.safe_load(ALERT_RULES.read_text())["groups"]


def test_dashboard_and_autoscaler_queries_pass_promtool(tmp_path):
    expressions = {**promql.dashboard_expressions(), **promql.autoscaling_expressions()}
    assert len(expressions) >= 15
    rule_file = tmp_path / "queries.yml"
    rule_file.write_text(promql.as_recording_rules(expressions))
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout


def test_query_syntax_check_can_fail(tmp_path):
    rule_file = tmp_path / "queries.yml"
    rule_file.write_text(promql.as_recording_rules({"bad": "sum by (model) (rate(tsumugi_requests_total[5m])"}))
    assert promtool("check", "rules", str(rule_file)).returncode != 0


def test_dashboard_covers_the_serving_signals():
    names = promql.stored_metric_names(promql.dashboard_expressions())
    assert names >= REQUIRED_DASHBOARD_METRICS, REQUIRED_DASHBOARD_METRICS - names
    quantile_panels = [expr for expr in promql.dashboard_expressions().values() if "histogram_quantile(0.95" in expr]
    assert len(quantile_panels) >= 4
    assert re.search(r"sum by \(model[,)]", DASHBOARD.read_text()), "per-adapter (model label) breakdown"


def test_autoscaler_scales_on_vllm_queue_depth():
    (query,) = promql.autoscaling_expressions().values()
    assert "vllm:num_requests_waiting" in query


def test_dashboard_panels_are_well_formed():
    """Grafana would silently merge duplicate ids and stack overlapping panels; every query needs a refId."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = [
        (panel["gridPos"]["x"] + dx, panel["gridPos"]["y"] + dy)
        for panel in panels
        for dx in range(panel["gridPos"]["w"])
        for dy in range(panel["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells)), "panels overlap"
    for panel in panels:
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "job", "model"} <= variables
