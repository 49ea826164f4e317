"""checkov (offline: BC_SKIP_MAPPING=TRUE) over the rendered manifests and the Dockerfile: no failed check,
and every skipped check carries its reason next to the resource (a `checkov.io/skipN: ID=reason`
annotation or a `# checkov:skip=ID: reason` comment)."""

from __future__ import annotations

import json

import pytest

from tests.deploy.tools import ROOT, run, tool

OFFLINE = {"BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "LOG_LEVEL": "WARNING"}
# The checks we skip, each with its reason written on the resource; anything else skipped is an error.
EXPECTED_SKIPS = {"CKV_K8S_43", "CKV_K8S_35"}


def checkov(args: list[str]) -> list[dict]:
    result = run([tool("checkov"), *args, "-o", "json", "--compact"], timeout=300, env=OFFLINE)
    assert result.stdout.strip(), f"checkov printed nothing:\n{result.stderr[-3000:]}"
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def reason(check: dict) -> str:
    """The suppression reason checkov read from the annotation or comment."""
    return (check.get("check_result") or {}).get("suppress_comment") or check.get("suppress_comment") or ""


def failures_and_skips(reports: list[dict]) -> tuple[list[str], list[dict]]:
    failed, skipped = [], []
    for report in reports:
        results = report.get("results", {})
        failed += [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results.get("failed_checks", [])]
        skipped += results.get("skipped_checks", [])
    return failed, skipped


def test_checkov_passes_on_rendered_manifests(rendered_text, tmp_path):
    for name, text in rendered_text.items():
        (tmp_path / f"{name.replace('/', '-')}.yaml").write_text(text)
    reports = checkov(["-d", str(tmp_path), "--framework", "kubernetes"])
    summary = reports[0]["summary"]
    assert summary["parsing_errors"] == 0 and summary["passed"] > 100, summary
    failed, skipped = failures_and_skips(reports)
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    assert skipped, "the documented skips should show up as skipped"
    for check in skipped:
        assert check["check_id"] in EXPECTED_SKIPS, check["check_id"]
        assert len(reason(check).strip()) > 20, f"{check['check_id']} skipped without a reason"


@pytest.mark.parametrize("dockerfile", ["Dockerfile"])
def test_checkov_passes_on_dockerfile(dockerfile):
    reports = checkov(["-f", str(ROOT / dockerfile), "--framework", "dockerfile"])
    failed, skipped = failures_and_skips(reports)
    assert reports[0]["summary"]["passed"] > 10
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    assert all(len(reason(check).strip()) > 20 for check in skipped)


def test_checkov_catches_an_insecure_manifest(rendered_text, tmp_path):
    """The scan can fail: a privileged container that runs as root is reported."""
    insecure = rendered_text["overlays/fp16"].replace(
        "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true"
    )
    (tmp_path / "insecure.yaml").write_text(insecure)
    failed, _ = failures_and_skips(checkov(["-d", str(tmp_path), "--framework", "kubernetes"]))
    assert any(line.startswith("CKV_K8S_20 ") for line in failed), failed
