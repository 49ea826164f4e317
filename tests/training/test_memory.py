"""Memory planner against hand-computed Llama-3-8B numbers (shape from its published config.json)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from training.errors import ModelError
from training.memory import GIB, load_shape, plan

from .conftest import REPO

LLAMA3_8B = "meta-llama/Meta-Llama-3-8B-Instruct"
# 32 layers × (q 4096² + k,v 2·4096·1024 + o 4096² + MLP 3·4096·14336) Linear weights.
LINEAR = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
# Embedding and untied LM head 128256 × 4096 each; 65 RMSNorm vectors of 4096.
OTHER = 2 * 128256 * 4096 + 65 * 4096


def test_llama3_8b_parameter_count():
    assert LINEAR + OTHER == 8_030_261_248
    assert load_shape(LLAMA3_8B).total_params() == 8_030_261_248


def test_llama3_8b_serving_weights_and_kv_cache():
    bf16 = plan(LLAMA3_8B, "serve", "bf16", batch=1, seq_len=8192, gpu_gib=80)
    assert bf16.weights_gib == pytest.approx(8_030_261_248 * 2 / GIB)  # 14.96 GiB
    assert bf16.kv_cache_per_token_kib == 128  # 2 · 32 layers · 8 kv heads · 128 dims · 2 bytes
    assert bf16.kv_cache_gib == pytest.approx(1.0)  # 8192 tokens
    assert bf16.total_gib == pytest.approx(14.957 + 1.0 + 1.0, abs=1e-3)
    int4 = plan(LLAMA3_8B, "serve", "int4")
    # 4-bit Linear weights + an fp16 scale per 128; embeddings, LM head and norms stay 16-bit.
    assert int4.weights_gib * GIB == pytest.approx(LINEAR * (0.5 + 2 / 128) + OTHER * 2)
    assert int4.weights_gib == pytest.approx(5.309, abs=1e-3)
    fp32 = plan(LLAMA3_8B, "serve", "fp32")
    assert fp32.weights_gib == pytest.approx(2 * bf16.weights_gib)


def test_llama3_8b_what_fits_on_a_24_gib_gpu():
    result = plan(LLAMA3_8B, "serve", "bf16", batch=4, seq_len=8192, gpu_gib=24)
    free_tokens = (24 * 0.9 * GIB - 8_030_261_248 * 2 - GIB) / 131072
    assert result.max_model_len_at_batch_size == int(free_tokens // 4)
    assert result.max_concurrency_at_seq_len == int(free_tokens // 8192) == 5
    assert result.fits


def test_llama3_8b_training_modes():
    full = plan(LLAMA3_8B, "full", "bf16", batch=1, seq_len=2048, gpu_gib=80)
    assert (full.weights_gib + full.gradients_gib + full.optimizer_gib) * GIB == 16 * 8_030_261_248
    assert not full.fits  # 120 GiB of weights and AdamW states alone
    lora = plan(LLAMA3_8B, "lora", "bf16", batch=1, seq_len=2048, lora_r=16, checkpointing=True)
    assert lora.trainable_params == 41_943_040  # r·(in+out) on all 7 Linears × 32 layers
    assert lora.weights_gib * GIB == 8_030_261_248 * 2 + 41_943_040 * 4
    assert lora.optimizer_gib * GIB == 41_943_040 * 8
    # Per token per layer (bf16): 12h + 4·kv + 8i = 167,936 B; checkpointing keeps 2h per layer + one layer.
    assert lora.activations_gib * GIB == 2048 * (32 * 4096 * 2 + 167_936)
    assert lora.logits_gib * GIB == 2048 * 128256 * 10
    no_ckpt = plan(LLAMA3_8B, "lora", "bf16", batch=1, seq_len=2048, checkpointing=False)
    assert no_ckpt.activations_gib * GIB == 2048 * 32 * 167_936  # 10.25 GiB
    half = plan(LLAMA3_8B, "lora", "bf16", batch=1, seq_len=2048, checkpointing=0.5)
    assert half.activations_gib * GIB == 2048 * (16 * 4096 * 2 + 167_936 + 16 * 167_936)  # 16 of 32 layers kept
    qlora = plan(LLAMA3_8B, "qlora", "bf16", batch=1, seq_len=2048)
    nf4 = LINEAR * (0.5 + 1 / 64 + 4 / (64 * 256)) + OTHER * 2
    assert qlora.weights_gib * GIB == pytest.approx(nf4 + 41_943_040 * 4)
    assert qlora.total_gib < lora.total_gib < full.total_gib


def test_local_config_directory_is_read(tiny_model):
    shape = load_shape(str(tiny_model))
    assert (shape.hidden_size, shape.num_layers, shape.num_kv_heads, shape.head_dim) == (128, 2, 1, 64)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelError, match=r"neither a directory with config\.json nor a known model"):
        load_shape("no/such-model")


def test_cli_json_has_the_documented_keys():
    out = subprocess.run(
        [sys.executable, "-m", "training", "memory", "--model", "llama-3-8b", "--mode", "qlora", "--json"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert {"weights_gib", "total_gib", "fits"} <= set(result)
    assert result["mode"] == "qlora"
    half = [sys.executable, "-m", "training", "memory", "--model", "llama-3-8b", "--mode", "lora", "--json"]
    full = subprocess.run(half, cwd=REPO, capture_output=True, text=True, check=True)
    half_run = subprocess.run([*half, "--checkpoint-fraction", "0.5"], cwd=REPO, capture_output=True, text=True)
    assert json.loads(half_run.stdout)["activations_gib"] > json.loads(full.stdout)["activations_gib"]
    bad = subprocess.run([*half, "--checkpoint-fraction", "2"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "--checkpoint-fraction must be between 0 and 1, got 2.0" in bad.stderr


def test_memory_module_does_not_import_torch():
    code = "import sys, training.memory; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
