"""The `make train` demo on SmolLM2-135M-Instruct: the served adapter answers the held-in Japanese questions
with the dataset's answers, the base model does not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO

SMOLLM2 = REPO / "models" / "smollm2-135m-instruct"


@pytest.mark.slow
@pytest.mark.skip(
    reason="known failure, issue 6 open: the shipped demo recipe scored 0/24 (3 epochs, lr 2e-3) and 1/24 "
    "(50 steps, lr 1e-3) on this 350-record sample; the recipe must be fixed before this runs in CI (~20 min)"
)
def test_demo_before_and_after(tmp_path):
    if not (SMOLLM2 / "config.json").is_file():
        pytest.fail(f"{SMOLLM2} is missing: run `make {SMOLLM2.relative_to(REPO)}/config.json` (make test does)")
    results = tmp_path / "results.json"
    command = [sys.executable, "-m", "training", "demo", "--out", str(tmp_path / "adapter"), "--results", str(results)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "exact answers: base" in run.stdout
    scores = json.loads(results.read_text(encoding="utf-8"))
    assert scores["total"] == 24
    assert scores["base"] <= 2, scores["base_replies"]
    assert scores["fine_tuned"] >= 16, scores["fine_tuned_replies"]  # two thirds of the held-in answers
