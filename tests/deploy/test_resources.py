"""The overlays' GPU, memory and batch sizing is what the memory planner says, not hand-picked numbers:
each overlay's Deployment names the planner inputs in its `tsumugi.dev/sizing` annotation, and this test
reruns deploy/plan_resources.py (which imports the planner, `training.memory`) and compares."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys

import pytest

from tests.deploy.tools import ROOT, run

SIZED_OVERLAYS = ["fp16", "awq"]


def load_script() -> object:
    spec = importlib.util.spec_from_file_location("plan_resources", ROOT / "deploy" / "plan_resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_planner_is_imported_and_gives_what_the_memory_command_prints(monkeypatch):
    """No subprocess (a second interpreter per call, and errors as CalledProcessError tracebacks); same numbers."""
    script = load_script()

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"plan_resources started a process: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    sized = script.sizing("meta-llama/Meta-Llama-3-8B-Instruct", "int4", 8192, 22)
    monkeypatch.undo()
    flags = ["--mode", "serve", "--dtype", "int4", "--seq-len", "8192", "--gpu-gib", "22", "--json"]
    cli = run([sys.executable, "-m", "training", "memory", "--model", "meta-llama/Meta-Llama-3-8B-Instruct", *flags],
              timeout=60, cwd=ROOT)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert sized["planner"] == json.loads(cli.stdout)


def test_an_unknown_model_is_a_one_line_error():
    result = run([sys.executable, str(ROOT / "deploy" / "plan_resources.py"), "--model", "no/such-model",
                  "--dtype", "bf16", "--gpu-gib", "40"], timeout=60, cwd=ROOT)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: 'no/such-model' is neither") and result.stderr.count("\n") == 1


def planned(command: str) -> dict:
    script, *args = shlex.split(command)
    result = run([sys.executable, str(ROOT / script), *args], timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("overlay", [*SIZED_OVERLAYS, "lora"])
def test_overlay_resources_match_the_memory_planner(rendered, overlay):
    docs = rendered[f"overlays/{overlay}"]
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    (config,) = [doc["data"] for doc in docs if doc["kind"] == "ConfigMap" and "TSUMUGI_MODEL" in doc["data"]]
    plan = planned(deployment["metadata"]["annotations"]["tsumugi.dev/sizing"])
    assert plan["planner"]["fits"], "the model must fit the GPU class the overlay selects"
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    for key in ("TSUMUGI_MAX_MODEL_LEN", "TSUMUGI_MAX_NUM_SEQS", "TSUMUGI_TENSOR_PARALLEL_SIZE"):
        assert config[key] == plan[key], key
    for resources in (server["resources"]["requests"], server["resources"]["limits"]):
        assert resources["nvidia.com/gpu"] == plan["nvidia.com/gpu"]
        assert resources["memory"] == plan["memory"]
        assert resources["cpu"] == plan["cpu"]
    (shm,) = [v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm == plan["shm"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (gpu_class,) = [e for t in terms for e in t["matchExpressions"] if e["key"] == "nvidia.com/gpu.memory"]
    assert gpu_class["operator"] == "Gt" and gpu_class["values"] == [plan["gpu_memory_mib_gt"]]
