"""Sample data → LoRA/QLoRA → served adapters → merge → served merged model → AWQ → served AWQ model.

Everything runs for real: SFT through TRL, the service (vLLM) as a subprocess from the serving virtualenv,
greedy chat requests over HTTP, scored by exact answer substring on held-in questions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.evaluate import EvaluationServer, load_eval_set, score
from training.merge import merge_adapter
from training.quantize import quantize_model
from training.sft import run_sft

from .conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_eval, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("e2e")
    data = tiny_eval.with_name("train.jsonl")
    lora = run_sft(tiny_config(tiny_model, data, folder / "lora", precision="fp32"))
    # bitsandbytes' CPU 4-bit path is ~4x slower per step than LoRA here: fewer steps, checked for serving only.
    qlora = run_sft(tiny_config(tiny_model, data, folder / "qlora", method="qlora", **{"optim.max_steps": 40}))
    return {"folder": folder, "data": data, "lora": lora, "qlora": qlora}


def test_adapters_serve_and_answer_where_the_base_model_does_not(tiny_model, tiny_eval, trained, record_property):
    questions = load_eval_set(tiny_eval)
    args = ["--model", str(tiny_model), "--dtype", "float32", "--max-lora-rank", "16",
            "--lora-modules", f"ja={trained['lora']}", f"qja={trained['qlora']}"]  # fmt: skip
    with EvaluationServer(args, trained["folder"] / "adapters.log") as server:
        base = score(server, str(tiny_model), questions)
        lora = score(server, "ja", questions)
        qlora = score(server, "qja", questions)
    record_property("scores", {"base": base.correct, "lora": lora.correct, "qlora": qlora.correct})
    print(f"\nheld-in exact answers: base {base.correct}/{base.total}, LoRA {lora.correct}, QLoRA {qlora.correct}")
    assert base.correct == 0, base.replies
    assert lora.correct == lora.total, lora.replies
    qlora_log = json.loads((trained["qlora"] / "train_log.json").read_text(encoding="utf-8"))
    qlora_losses = [entry["loss"] for entry in qlora_log if "loss" in entry]
    assert qlora_losses[-1] < qlora_losses[0] / 2  # it trained
    assert qlora.replies != base.replies and all(qlora.replies), qlora.replies  # and its adapter is applied
    assert qlora.correct >= qlora.total // 2, qlora.replies  # measured: 6/6


def test_merged_then_awq_models_serve_the_same_answers(tiny_eval, trained, tiny_model, record_property):
    questions = load_eval_set(tiny_eval)
    merged = merge_adapter(str(tiny_model), trained["lora"], trained["folder"] / "merged", dtype="fp16")
    assert (merged / "chat_template.jinja").read_text() == (trained["lora"] / "chat_template.jinja").read_text()
    with EvaluationServer(["--model", str(merged)], trained["folder"] / "merged.log") as server:
        merged_score = score(server, str(merged), questions)
    assert merged_score.correct == merged_score.total, merged_score.replies

    awq = quantize_model(merged, trained["data"], trained["folder"] / "awq", method="awq", num_samples=6)
    # Default flags: --dtype auto picks bfloat16 for W4A16 on CPU (the only dtype of cpu_gemm_wna16).
    with EvaluationServer(["--model", str(awq)], trained["folder"] / "awq.log") as server:
        awq_score = score(server, str(awq), questions)
    record_property("awq_correct", awq_score.correct)
    print(f"\nAWQ W4A16 held-in exact answers: {awq_score.correct}/{awq_score.total}")
    assert awq_score.correct > awq_score.total // 2, awq_score.replies
