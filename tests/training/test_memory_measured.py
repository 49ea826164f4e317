"""Memory planner vs a measured peak (`torch.cuda.max_memory_allocated`): runs only where a CUDA GPU is present."""

from __future__ import annotations

import pytest
import torch

from training.memory import GIB, plan
from tsumugi.default_model import DEFAULT_MODEL

from .conftest import REPO

SMOLLM2 = REPO / DEFAULT_MODEL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to measure")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_step_peak_matches_the_plan(checkpointing):
    from peft import LoraConfig, get_peft_model

    from training.models import load_causal_lm

    batch, seq_len = 4, 1024
    model = load_causal_lm(str(SMOLLM2), dtype=torch.bfloat16).cuda()
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # the second step has AdamW states allocated
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    measured = torch.cuda.max_memory_allocated() / GIB
    predicted = plan(str(SMOLLM2), "lora", "bf16", batch, seq_len, 16, checkpointing).total_gib
    print(f"\nLoRA peak (checkpointing={checkpointing}): measured {measured:.2f} GiB, planned {predicted:.2f} GiB")
    assert predicted == pytest.approx(measured, rel=0.35)
