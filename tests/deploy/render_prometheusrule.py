"""Wrap deploy/prometheus/alerts.yml into k8s/base/prometheusrule.yaml.

The compose Prometheus reads the plain rule file; the Prometheus Operator needs the same groups inside a
PrometheusRule resource. Kustomize cannot wrap a file into a resource's spec, so this script writes the
wrapper and `test_prometheusrule_matches_alert_rules` fails whenever the two disagree.

    .venv-tools/bin/python tests/deploy/render_prometheusrule.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = ROOT / "k8s" / "base" / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from deploy/prometheus/alerts.yml by tests/deploy/render_prometheusrule.py: edit that.\n"
    "# The `release` label must match your Prometheus' ruleSelector (kube-prometheus-stack's default).\n"
)


def prometheus_rule() -> dict:
    """The PrometheusRule resource carrying exactly the groups of the alert rule file."""
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tsumugi", "labels": {"release": "kube-prometheus-stack"}},
        "spec": {"groups": groups},
    }


class _BlockStyleDumper(yaml.SafeDumper):
    """Writes multi-line strings (the PromQL expressions) as `|` blocks, as they look in alerts.yml."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStyleDumper.add_representer(str, _represent_str)


def render() -> str:
    return HEADER + yaml.dump(prometheus_rule(), Dumper=_BlockStyleDumper, sort_keys=False, width=1000)


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(render())
    sys.stdout.write(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}\n")
