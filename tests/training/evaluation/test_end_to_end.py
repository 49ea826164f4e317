"""`python -m training eval` end to end against the real service (vLLM, the tiny model and an adapter tuned on a
held-in task): the tuned adapter scores higher than the base with intervals in the report; a killed run resumes
without any request answered twice (counted at the service); a rerun sends nothing; judge mode runs with the
service as its own judge (its random-weight replies never hold a grade: counted as parse failures after one
retry, excluded), both orders of every pair judged."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.tiny_model import build_tiny_llama
from tests.training.conftest import tiny_config
from training.demos.held_in import EvaluationServer
from training.sft import run_sft

pytestmark = pytest.mark.engine  # the real service, asked over HTTP

INSTRUCTION = "次の質問に答えてください。"
REPO = Path(__file__).resolve().parents[3]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def served(tiny_eval, tmp_path_factory):
    """The service with a tiny base model ('base') and an adapter ('qa') tuned on the task's samples, asked
    the way `eval run --mode chat` asks (system: the task instruction, user: the sample input). The base has
    4096 positions: the judge's rubric alone is over 1,000 of the tiny tokenizer's tokens."""
    folder = tmp_path_factory.mktemp("evaluation")
    tiny_model = build_tiny_llama(folder / "tiny-llama-4k", seed=0, max_positions=4096)
    records = [json.loads(line) for line in tiny_eval.with_name("train.jsonl").read_text(encoding="utf-8").splitlines()]
    samples = [{"input": r["instruction"], "output": r["output"]} for r in records]
    header = {"instruction": INSTRUCTION, "output_length": 32, "metrics": ["exact_match", "char_f1"]}
    task = write_jsonl(folder / "held_in.jsonl", [header, *samples])
    chats = [
        {"messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": s["input"]},
                      {"role": "assistant", "content": s["output"]}]}
        for s in samples
    ]  # fmt: skip
    data = write_jsonl(folder / "train.jsonl", chats)
    adapter = run_sft(tiny_config(tiny_model, data, folder / "qa", precision="fp32"))
    args = ["--model", str(tiny_model), "--served-model-name", "base", "--lora-modules", f"qa={adapter}",
            "--dtype", "float32", "--max-model-len", "4096"]  # fmt: skip
    with EvaluationServer(args, folder / "service.log") as server:
        yield {"url": f"{server.url}/v1", "server": server, "task": task, "folder": folder, "samples": samples}


def evaluate(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "training", "eval", *args]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def answered(url: str, model: str) -> int:
    """Requests the service answered (status 200) for `model`, from its own metrics."""
    metrics = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=30).text
    pattern = re.compile(rf'^tsumugi_requests_total\{{[^}}]*model="{model}"[^}}]*status="200"[^}}]*\}} (\S+)$', re.M)
    return int(sum(float(value) for value in pattern.findall(metrics)))


def test_the_tuned_adapter_scores_higher_with_intervals(served):
    out = served["folder"] / "run"
    args = ["run", "--tasks", str(served["task"]), "--model", "base", "--model", "qa", "--mode", "chat",
            "--num-few-shots", "0", "--base-url", served["url"], "--out", str(out)]  # fmt: skip
    first = evaluate(*args)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    scores = {(s["model"], s["metric"]): s for s in report["scores"]}
    n = len(served["samples"])
    estimate = {key: score["interval"]["estimate"] for key, score in scores.items()}
    assert estimate[("qa", "exact_match")] == 1.0, first.stdout  # it learnt the held-in answers
    assert estimate[("base", "exact_match")] == 0.0
    assert estimate[("qa", "char_f1")] > estimate[("base", "char_f1")]
    for score in scores.values():
        interval = score["interval"]
        assert interval["low"] <= interval["estimate"] <= interval["high"] and score["n"] == len(served["samples"])
    (difference,) = [d for d in report["differences"] if d["metric"] == "exact_match"]
    assert difference["mcnemar"]["c"] == n or difference["mcnemar"]["b"] == n
    predictions = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(predictions) == 2 * n and (out / "report.png").stat().st_size > 0
    assert "| qa |" in (out / "report.md").read_text(encoding="utf-8")
    assert f"requests sent: {2 * n}, answers from the cache: 0" in first.stdout

    before = answered(served["url"], "qa") + answered(served["url"], "base")
    again = evaluate(*args)  # temperature 0: every answer from the cache, the same scores
    assert f"requests sent: 0, answers from the cache: {2 * n}" in again.stdout
    assert answered(served["url"], "qa") + answered(served["url"], "base") == before
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["scores"] == report["scores"]


def test_a_killed_run_resumes_without_asking_anything_twice(served):
    """Killed (SIGKILL) part-way, then started again: every distinct request is answered by the service
    exactly once across both runs (a request in flight at the kill is aborted by the service, not answered)."""
    folder = served["folder"]
    header = {"instruction": INSTRUCTION, "output_length": 48, "metrics": ["char_f1"]}
    task = write_jsonl(folder / "many.jsonl", [header, *({"input": f"質問{i}", "output": "答え"} for i in range(30))])
    out = folder / "killed"
    args = ["run", "--tasks", str(task), "--model", "base", "--mode", "chat", "--num-few-shots", "0",
            "--base-url", served["url"], "--out", str(out), "--concurrency", "1"]  # fmt: skip
    before = answered(served["url"], "base")
    command = [sys.executable, "-m", "training", "eval", *args]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while cached_answers(out / "cache") < 10 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    kept = cached_answers(out / "cache")
    assert 10 <= kept < 30
    resumed = evaluate(*args)
    assert f"answers from the cache: {kept}" in resumed.stdout
    assert answered(served["url"], "base") - before == 30  # each of the 30 requests answered once in all


def cached_answers(cache: Path) -> int:
    try:
        with sqlite3.connect(cache / "answers.sqlite3", timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_judge_mode_with_the_service_as_judge(served):
    questions = write_jsonl(served["folder"] / "questions.jsonl", [
        {"id": "q1", "category": "knowledge", "question": "日本で一番高い山は？"},
        {"id": "q2", "category": "writing", "question": "春についての短い詩を書いてください。"},
        {"id": "q3", "category": "math", "question": "12足す30は？", "reference": "42"},
    ])  # fmt: skip
    out = served["folder"] / "judge"
    before = answered(served["url"], "base") + answered(served["url"], "qa")
    run = evaluate("judge", "--questions", str(questions), "--model", "base", "--model", "qa", "--judge-model", "base",
                   "--base-url", served["url"], "--out", str(out), "--answer-max-tokens", "16",
                   "--judge-max-tokens", "16")  # fmt: skip
    judgements = json.loads((out / "judgements.json").read_text(encoding="utf-8"))
    single, (pair,) = judgements["single"], judgements["pairwise"]
    assert [g["model"] for g in single] == ["base", "qa"] and all(g["judge_model"] == "base" for g in single)
    # A random model never writes [[N]]: each grade asked twice (the retry differs), then excluded, not scored.
    for grading in single:
        assert grading["parse_failures"] == 3 and grading["retries"] == 3
        assert all(g["score"] is None and len(g["judge_texts"]) == 2 for g in grading["grades"])
        assert len(grading["prompt_sha256"]) == 2 and grading["temperature"] == 0.0
    assert pair["model_a"] == "base" and pair["model_b"] == "qa" and pair["excluded"] == 3
    for grade in pair["grades"]:  # judged with A's answer first and with B's first, each retried once
        assert len(grade["judge_texts_a_first"]) == 2 and len(grade["judge_texts_b_first"]) == 2
    assert "judge replies unparsed after one retry (excluded, not scored): 12" in run.stdout
    # 2 x 3 answers + 2 x 3 grades (x2: retried) + 3 pairs in 2 orders (x2: retried)
    assert answered(served["url"], "base") + answered(served["url"], "qa") - before == 6 + 12 + 12
    assert (out / "report.md").exists() and (out / "report.png").exists()
