"""The `make train` demo on SmolLM2-135M-Instruct: the served adapter answers the held-in Japanese questions
with the dataset's answers, the base model does not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.training.conftest import REPO
from training.config import load_config
from training.data.records import load_records, select_records
from training.demos.japanese_qa import DEFAULT_CONFIG, DEFAULT_EVAL
from tsumugi.default_model import DEFAULT_MODEL

SMOLLM2 = REPO / DEFAULT_MODEL


def test_demo_trains_on_exactly_the_questions_it_asks():
    """The demo recipe selects records by number; the eval set names them by number too. They must not drift."""
    cfg = load_config(DEFAULT_CONFIG, {})
    asked = [item["index"] for item in json.loads(DEFAULT_EVAL.read_text(encoding="utf-8"))["items"]]
    assert cfg.data.records == asked
    records = load_records([REPO / p for p in cfg.data.paths]).records
    assert [r.source for r in select_records(records, cfg.data.records)] == [
        f"{REPO / cfg.data.paths[0]}: line {i + 1}" for i in asked
    ]


@pytest.mark.engine
@pytest.mark.slow
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
    assert scores["fine_tuned"] >= 20, scores["fine_tuned_replies"]  # measured: 23/24 (12 epochs)
    # ... and ends with the evaluation report: the same replies, llm-jp-eval's metrics, intervals, McNemar
    report = json.loads((tmp_path / "adapter.report" / "report.json").read_text(encoding="utf-8"))
    estimate = {(s["model"], s["metric"]): s["interval"]["estimate"] for s in report["scores"]}
    assert estimate[("ja", "char_f1")] > estimate[("base", "char_f1")] + 0.3, estimate
    assert estimate[("ja", "exact_match")] > estimate[("base", "exact_match")], estimate
    (difference,) = [d for d in report["differences"] if d["metric"] == "exact_match"]
    assert difference["mcnemar"]["p_value"] < 0.05
    assert "| ja |" in run.stdout and (tmp_path / "adapter.report" / "report.png").is_file()
