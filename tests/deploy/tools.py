"""Where the deploy-check tools live, and small helpers to run them.

The tests run in .venv-tools (checkov, kubectl, hadolint, validators); the service under test runs from
.venv-serve; Prometheus and promtool come from Debian's `prometheus` package (`make tools`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = Path(sys.executable).parent
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
K8S = ROOT / "k8s"
DEPLOY = ROOT / "deploy"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tsumugi.json"

# The Kubernetes version the manifests are written for (deploy/README.md), and the supported range they are
# also validated against: 1.30 is the first release with the preStop `sleep` action enabled by default.
KUBERNETES_VERSION = "1.33.0"
SUPPORTED_KUBERNETES_VERSIONS = ["1.30.0", KUBERNETES_VERSION, "1.37.0"]

# Every kustomization an operator applies: the serving overlays (one Deployment of tsumugi each), the scale-out
# overlays (model-aware routing in front of the lora overlay; one replica across nodes) and the training workloads.
SERVING_OVERLAYS = ["fp16", "awq", "lora"]
SCALE_OUT_OVERLAYS = ["inference-pool", "multi-node"]
KUSTOMIZATIONS = {
    **{f"overlays/{name}": K8S / "overlays" / name for name in [*SERVING_OVERLAYS, *SCALE_OUT_OVERLAYS]},
    "training/qlora": K8S / "training" / "qlora",
    "training/multi-gpu": K8S / "training" / "multi-gpu",
    "training/evaluation": K8S / "training" / "evaluation",
}
# Pods that use no GPU, by their component label: the evaluation Job only sends HTTP requests to the served model,
# the endpoint picker only chooses a pod per request.
CPU_ONLY_COMPONENTS = {"evaluation", "endpoint-picker"}
# Kustomizations whose workload is a TrainJob: its pods come from a Trainer runtime, not from a pod spec here
# (tests/deploy/test_scale_out_manifests.py checks it).
TRAINER_RUNTIME_WORKLOADS = {"training/multi-gpu"}


def tool(name: str) -> str:
    """Path of a CLI tool: the tools venv's copy first, then the system's (promtool, prometheus)."""
    candidate = TOOLS_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found; run `make tools`")
    return found


def run(args: list[str], timeout: float = 300, env: dict[str, str] | None = None, **kwargs):
    """Run a tool and capture its output (never raises on a non-zero exit: tests assert on it)."""
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        **kwargs,
    )


def kustomize(path: Path) -> str:
    result = run([tool("kubectl"), "kustomize", str(path)], timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return result.stdout


def load_documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def pod_templates(doc: dict) -> list[dict]:
    """The pod templates inside a workload: Deployment/Job, or a LeaderWorkerSet's leader and worker."""
    spec = doc.get("spec", {})
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return [spec["template"]]
    if doc["kind"] == "LeaderWorkerSet":
        return [spec["leaderWorkerTemplate"]["leaderTemplate"], spec["leaderWorkerTemplate"]["workerTemplate"]]
    return []


def pod_specs(doc: dict) -> list[dict]:
    """The pod specs inside a workload (see pod_templates)."""
    return [template["spec"] for template in pod_templates(doc)]
