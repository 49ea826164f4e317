"""Merge a LoRA adapter into its base model: plain safetensors weights that vLLM serves without LoRA.

The merge runs in fp32 (base weights loaded unquantised, even for a QLoRA adapter) and casts once at the end,
so fp16/bf16 rounding happens a single time. The tokenizer comes from the adapter directory, so the merged
model keeps the prompt format it was trained with as its chat template.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from training.errors import ConfigError, ModelError, OutputExistsError
from training.manifest import derived_manifest, write_manifest
from tsumugi.cli_flags import command_settings, setting
from tsumugi.model_identity import model_identity

MERGE_DTYPES = ("bf16", "fp16", "fp32")


@command_settings
class MergeSettings:
    """`python -m training merge`: its flags, and their defaults."""

    base: str = setting()
    adapter: Path = setting()
    out: Path = setting()
    dtype: Literal[MERGE_DTYPES] = setting("bf16")


def merge_adapter(base: str, adapter: Path, out: Path, dtype: str = MergeSettings.dtype) -> Path:
    """Checks the arguments before torch and peft load, so a mistake is reported in a second."""
    if dtype not in MERGE_DTYPES:
        raise ConfigError(f"--dtype must be one of {MERGE_DTYPES}, got {dtype!r}")
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
    out = Path(out)
    if out.exists():
        raise OutputExistsError(f"{out} already exists; remove it or choose another --out")
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from training.checkpoints import publish_directory
    from training.models import load_causal_lm

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)

    model = load_causal_lm(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    target_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    merged = merged.to(target_dtype)
    merged.config.dtype = target_dtype
    merged.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(staging)

    details = {"base_model": str(base), "base_model_identity": model_identity(str(base))}
    write_manifest(staging, derived_manifest("merged", Path(adapter), **details, adapter=str(adapter), dtype=dtype))
    publish_directory(staging, out)
    return out
