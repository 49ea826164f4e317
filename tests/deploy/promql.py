"""Every PromQL expression the deployment ships, gathered from where it lives: the alert rules, the Grafana
dashboard and the autoscaler's trigger. Tests syntax-check them with promtool and look up their metric
names in a real Prometheus."""

from __future__ import annotations

import json
import re

import yaml

from tests.deploy.tools import ALERT_RULES, DASHBOARD, K8S

# Grafana's template variables, replaced by what they expand to at query time.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".*", "$model": ".*"}
METRIC_NAME = re.compile(r"\b((?:tsumugi_|vllm:)[a-zA-Z0-9_:]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in rules for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found[f"{panel['title']} [{target['refId']}]"] = expr
    return found


def autoscaling_expressions() -> dict[str, str]:
    scaled = yaml.safe_load((K8S / "base" / "scaledobject.yaml").read_text())
    return {f"ScaledObject trigger {i}": t["metadata"]["query"] for i, t in enumerate(scaled["spec"]["triggers"])}


def all_expressions() -> dict[str, str]:
    return {**alert_expressions(), **dashboard_expressions(), **autoscaling_expressions()}


def as_recording_rules(expressions: dict[str, str]) -> str:
    """A rule file promtool can check: one recording rule per expression."""
    rules = [{"record": f"check:expr_{i}", "expr": expr} for i, expr in enumerate(expressions.values())]
    return yaml.safe_dump({"groups": [{"name": "syntax", "rules": rules}]}, sort_keys=False)


def stored_metric_names(expressions: dict[str, str]) -> set[str]:
    """The series names the expressions read (histogram `_bucket` kept: that is the stored name)."""
    return {name for expr in expressions.values() for name in METRIC_NAME.findall(expr)}
