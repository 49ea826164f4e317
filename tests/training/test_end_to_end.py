"""Sample data → LoRA/QLoRA → served adapters → merge → served merged model → AWQ → served AWQ model.

Everything runs for real: SFT through TRL, the service (vLLM) as a subprocess from the serving virtualenv,
greedy chat requests over HTTP, scored by exact answer substring on held-in questions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from training.demos.held_in import EvaluationServer, load_eval_set, score_models
from training.export.merge import merge_adapter
from training.export.quantize import quantize_model
from training.manifest import MANIFEST_NAME
from training.sft import run_sft

from .conftest import tiny_config

pytestmark = pytest.mark.engine  # training runs and the real service

ATTRIBUTION = "tiny sample, tsumugi tests (CC BY-NC-SA 4.0)"
ACCEPTED_RISK = "test: the licence guard's override is recorded"


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_eval, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("e2e")
    data = folder / "train.jsonl"  # declared non-commercial: the LoRA run (commercial) accepts that risk
    data.write_bytes(tiny_eval.with_name("train.jsonl").read_bytes())
    (folder / "train.jsonl.licence.yaml").write_text(
        f"licence: CC-BY-NC-SA-4.0\ncommercial_use: false\nshare_alike: true\nattribution: {ATTRIBUTION}\n"
    )
    risk = {"intended_use": "commercial", "accept_licence_risk": ACCEPTED_RISK}
    lora = run_sft(tiny_config(tiny_model, data, folder / "lora", precision="fp32", **risk))
    # bitsandbytes' CPU 4-bit path is ~4x slower per step than LoRA here: fewer steps, checked for serving only.
    qlora = run_sft(tiny_config(tiny_model, data, folder / "qlora", method="qlora", **{"optim.max_steps": 40}))
    assert "accepted_risk" in json.loads((lora / MANIFEST_NAME).read_text(encoding="utf-8"))["licence"]
    return {"folder": folder, "data": data, "lora": lora, "qlora": qlora}


def card(server: EvaluationServer, model: str) -> dict:
    """The service's model card for `model` (`GET /v1/models/{id}`)."""
    response = httpx.get(f"{server.url}/v1/models/{model}", timeout=30)
    response.raise_for_status()
    return response.json()


def manifest_sha256(directory: Path) -> str:
    return hashlib.sha256((directory / MANIFEST_NAME).read_bytes()).hexdigest()


def test_adapters_serve_and_answer_where_the_base_model_does_not(tiny_model, tiny_eval, trained, record_property):
    questions = load_eval_set(tiny_eval)
    args = ["--model", str(tiny_model), "--dtype", "float32", "--max-lora-rank", "16",
            "--lora-modules", f"ja={trained['lora']}", f"qja={trained['qlora']}"]  # fmt: skip
    with EvaluationServer(args, trained["folder"] / "adapters.log") as server:
        base, lora, qlora = score_models(server, [str(tiny_model), "ja", "qja"], questions)
        cards = {name: card(server, name) for name in (str(tiny_model), "ja", "qja")}
    record_property("scores", {"base": base.correct, "lora": lora.correct, "qlora": qlora.correct})
    print(f"\nheld-in exact answers: base {base.correct}/{base.total}, LoRA {lora.correct}, QLoRA {qlora.correct}")
    assert base.correct == 0, base.replies
    assert lora.correct == lora.total, lora.replies
    qlora_log = json.loads((trained["qlora"] / "train_log.json").read_text(encoding="utf-8"))
    qlora_losses = [entry["loss"] for entry in qlora_log if "loss" in entry]
    assert qlora_losses[-1] < qlora_losses[0] / 2  # it trained
    assert qlora.replies != base.replies and all(qlora.replies), qlora.replies  # and its adapter is applied
    assert qlora.correct >= qlora.total // 2, qlora.replies  # measured: 6/6
    # Lineage: the adapters' manifests as the service returns them; the base model (no manifest) has none.
    assert cards[str(tiny_model)]["lineage"] is None and cards[str(tiny_model)]["licence"] is None
    for name, kind, directory in (("ja", "lora-adapter", trained["lora"]), ("qja", "qlora-adapter", trained["qlora"])):
        lineage = cards[name]["lineage"]
        assert lineage["chain"] == [{"kind": kind, "created": lineage["manifest"]["created"],
                                     "manifest_sha256": manifest_sha256(directory), "verified": True}]  # fmt: skip
        manifest, data = lineage["manifest"], trained["data"]
        records = len(data.read_text(encoding="utf-8").splitlines())
        data_sha256 = hashlib.sha256(data.read_bytes()).hexdigest()
        assert manifest["data_files"] == [{"path": str(data), "sha256": data_sha256, "records": records}]
        assert manifest["base_model_identity"]["name"] == str(tiny_model)
        assert len(manifest["base_model_identity"]["weights_sha256"]) == 64
    # Licence: the LoRA run's accepted risk and the data's attribution, as the service shows them.
    licence = cards["ja"]["licence"]
    assert cards["ja"]["lineage"]["manifest"]["licence"] == licence and licence["intended_use"] == "commercial"
    assert licence["accepted_risk"]["reason"] == ACCEPTED_RISK and len(licence["accepted_risk"]["conflicts"]) == 2
    assert licence["obligations"]["attribution"] == [ATTRIBUTION] and licence["obligations"]["non_commercial"]


def test_merged_then_awq_models_serve_the_same_answers(tiny_eval, trained, tiny_model, record_property):
    questions = load_eval_set(tiny_eval)
    merged = merge_adapter(str(tiny_model), trained["lora"], trained["folder"] / "merged", dtype="fp16")
    assert (merged / "chat_template.jinja").read_text() == (trained["lora"] / "chat_template.jinja").read_text()
    # Eager: a plain Llama, whose compiled path the serving tests cover; the AWQ model below keeps the defaults.
    with EvaluationServer(["--model", str(merged), "--enforce-eager"], trained["folder"] / "merged.log") as server:
        (merged_score,) = score_models(server, [str(merged)], questions)
        merged_card = card(server, str(merged))
    merged_lineage = merged_card["lineage"]
    assert merged_score.correct == merged_score.total, merged_score.replies
    assert [(link["kind"], link["verified"]) for link in merged_lineage["chain"]] == [
        ("merged", True), ("lora-adapter", True)]  # fmt: skip
    assert merged_lineage["chain"][1]["manifest_sha256"] == manifest_sha256(trained["lora"])
    assert merged_lineage["manifest"]["parent"]["path"] == str(trained["lora"])
    lora_licence = json.loads((trained["lora"] / MANIFEST_NAME).read_text(encoding="utf-8"))["licence"]
    assert merged_card["licence"] == lora_licence  # the obligations travel down the chain

    awq = quantize_model(merged, trained["data"], trained["folder"] / "awq", method="awq", num_samples=6)
    # Default flags: --dtype auto picks bfloat16 for W4A16 on CPU (the only dtype of cpu_gemm_wna16).
    # --require-licence-metadata: the AWQ model carries the LoRA run's licence record, so it is served.
    with EvaluationServer(["--model", str(awq), "--require-licence-metadata"], trained["folder"] / "awq.log") as server:
        (awq_score,) = score_models(server, [str(awq)], questions)
        awq_card = card(server, str(awq))
    awq_lineage = awq_card["lineage"]
    record_property("awq_correct", awq_score.correct)
    print(f"\nAWQ W4A16 held-in exact answers: {awq_score.correct}/{awq_score.total}")
    assert awq_score.correct > awq_score.total // 2, awq_score.replies
    # adapter → merged → AWQ, each link naming its parent's manifest by hash, as the service returns it.
    assert [(link["kind"], link["verified"]) for link in awq_lineage["chain"]] == [
        ("awq-w4a16", True), ("merged", True), ("lora-adapter", True)]  # fmt: skip
    assert [link["manifest_sha256"] for link in awq_lineage["chain"]] == [
        manifest_sha256(awq), manifest_sha256(merged), manifest_sha256(trained["lora"])]  # fmt: skip
    assert awq_card["licence"] == lora_licence and awq_card["licence"]["obligations"]["attribution"] == [ATTRIBUTION]
    assert awq_lineage["manifest"]["calibration_data"]["sha256"] == hashlib.sha256(
        trained["data"].read_bytes()).hexdigest()  # fmt: skip
