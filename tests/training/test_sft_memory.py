"""The recipe's memory levers: partial gradient checkpointing, and LoRA inputs that are not copied to fp32."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from peft.helpers import disable_input_dtype_casting
from transformers.modeling_layers import GradientCheckpointingLayer

from training.models import load_causal_lm
from training.sft import SFTRecipe

from .conftest import SAMPLE, tiny_config


def test_partial_checkpointing_recomputes_only_the_first_layers(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, SAMPLE, tmp_path / "out", **{"optim.max_steps": 1, "gradient_checkpointing": 0.5})
    recipe = SFTRecipe(cfg).setup()
    recipe.trainer.train()
    layers = [m for m in recipe.trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]  # the tiny model has 2 layers


def test_lora_without_the_fp32_input_cast_gives_the_same_gradients_under_autocast(tiny_model):
    """Why the recipe turns peft's input cast off under mixed precision: autocast runs the LoRA matmuls in bf16
    either way, so the fp32 copy of every LoRA input (kept for backward) buys nothing."""
    grads, saved_bytes = [], []
    for cast in (True, False):
        torch.manual_seed(0)
        model = load_causal_lm(str(tiny_model), dtype=torch.bfloat16)
        config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(model, config)
        ids = torch.arange(3, 40).unsqueeze(0)
        saved: dict[int, int] = {}

        def keep(tensor: torch.Tensor, saved: dict[int, int] = saved) -> torch.Tensor:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with disable_input_dtype_casting(model, active=not cast), torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        saved_bytes.append(sum(saved.values()))
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert saved_bytes[1] < saved_bytes[0], saved_bytes  # what autograd keeps for backward: no 16-bit copies
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name, grad in grads[0].items():
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grads[1][name], grad, msg=name)
