"""The null adapter: a zero LoRA adapter that base-model requests run through on CPU when adapters are served.

vLLM 0.32's CPU LoRA kernels (`lora/ops/torch_ops/lora_ops.py`) index the adapter-slot tensor with the "no
LoRA" index -1 as a Python index, so base-model requests batched with adapter requests get the *last* slot's
adapter applied; only an all-base batch skips LoRA. On CPU, when adapters are served, base-model requests
therefore go through a zero adapter (one module, B = 0, so x·A·B adds exactly 0) and never carry index -1. It
takes one extra slot, so `--max-loras N` still lets N real adapters share batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_null_adapter_for_model(hf_config: Any, out_dir: Path) -> Path:
    """A zero LoRA adapter on the first layer's `q_proj`, shaped from the model's config: the null adapter when
    no adapter is there to copy a shape from (runtime adapters, none at start). Llama-style module names
    (Llama, Qwen, Mistral, SmolLM2)."""
    import torch
    from safetensors.torch import save_file

    hidden = hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // hf_config.num_attention_heads
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {
        f"{prefix}.lora_A.weight": torch.zeros(1, hidden),
        f"{prefix}.lora_B.weight": torch.zeros(hf_config.num_attention_heads * head_dim, 1),
    }
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 1, "lora_alpha": 1, "target_modules": ["q_proj"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    (out_dir / "adapter_config.json").write_text(json.dumps(config | {"bias": "none", "lora_dropout": 0.0}))
    return out_dir


def write_null_adapter(template_adapter: Path, out_dir: Path) -> Path:
    """Write a zero LoRA adapter shaped like one module of `template_adapter` (see the module docstring)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((template_adapter / "adapter_config.json").read_text(encoding="utf-8"))
    with safe_open(str(template_adapter / "adapter_model.safetensors"), framework="pt") as weights:
        key_a = next(k for k in weights.keys() if ".lora_A." in k)  # noqa: SIM118 (safe_open has no __iter__)
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        tensors = {
            key_a: weights.get_tensor(key_a)[:1].contiguous().zero_(),
            key_b: weights.get_tensor(key_b)[:, :1].contiguous().zero_(),
        }
    module = key_a.split(".lora_A.")[0].rsplit(".", 1)[-1]
    null_config = {key: config[key] for key in ("base_model_name_or_path", "task_type", "peft_type") if key in config}
    null_config.update(r=1, lora_alpha=1, target_modules=[module], bias="none", lora_dropout=0.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    (out_dir / "adapter_config.json").write_text(json.dumps(null_config), encoding="utf-8")
    return out_dir
