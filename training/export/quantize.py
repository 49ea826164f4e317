"""W4A16 weight quantization (AWQ or GPTQ) with llm-compressor, calibrated on the training data.

The output is a compressed-tensors checkpoint that vLLM loads as a plain model. Weights of every Linear layer
except the LM head become 4-bit integers with one scale per `group_size` input columns; the group size must
divide each layer's input width, so it is the largest of 128/64/32 that does (SmolLM2's hidden size 576 is
9 × 64, not a multiple of 128). The widths come from config.json (Llama-style layers, as in training.memory),
so a model that no group size fits is an error before the tokenizer, the data or the weights load.
Calibration samples are training records rendered with the model's own chat template — the prompt format it
was fine-tuned with — so activation statistics match what it will serve.
"""

from __future__ import annotations

import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from training.data.examples import render
from training.data.records import load_records
from training.data.templates import TEMPLATE_NAMES
from training.errors import ConfigError, ModelError, OutputExistsError
from training.manifest import derived_manifest, write_manifest
from training.memory import shape_from_config
from tsumugi.cli_flags import command_settings, setting
from tsumugi.model_identity import file_sha256

GROUP_SIZES = (128, 64, 32)
METHODS = ("awq", "gptq")


@command_settings
class QuantizeSettings:
    """`python -m training quantize`: its flags, and their defaults."""

    model: Path = setting()
    method: Literal[METHODS] = setting("awq")
    data: Path = setting(help="training data: calibration samples come from it")
    out: Path = setting()
    template: Literal[TEMPLATE_NAMES] | None = setting(None, "default: the model's own chat template")
    num_samples: int = setting(64)
    max_length: int = setting(256)
    group_size: int | None = setting(None, "default: largest of 128/64/32 dividing every layer")


def choose_group_size(in_features: list[int]) -> int:
    """Largest supported group size dividing every quantised layer's input width."""
    for size in GROUP_SIZES:
        if all(width % size == 0 for width in in_features):
            return size
    raise ModelError(f"no group size in {GROUP_SIZES} divides all layer widths {sorted(set(in_features))}")


def group_size_for(model_dir: Path, requested: int | None = None) -> int:
    """The group size for this model's quantised Linear layers (all but the LM head), read from its config.json
    alone: a model no group size fits, or a --group-size that does not divide it, fails in a second."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise ModelError(f"{model_dir}: no config.json, so not a model directory")
    widths = sorted({width for width, _ in shape_from_config(config).linear_shapes()})
    if requested is None:
        return choose_group_size(widths)
    if requested <= 0 or any(width % requested for width in widths):
        raise ConfigError(f"--group-size {requested} does not divide every quantised layer width {widths}")
    return requested


def build_recipe(method: str, group_size: int) -> list:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size)
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
    if method == "awq":
        # AWQ only rescales channels; the QuantizationModifier after it does the quantization itself.
        return [AWQModifier(), QuantizationModifier(config_groups=groups, ignore=["lm_head"])]
    if method == "gptq":
        return [GPTQModifier(config_groups=groups, ignore=["lm_head"])]
    raise ConfigError(f"--method must be one of {METHODS}, got {method!r}")


def calibration_dataset(data: Path, tokenizer, template: str, num_samples: int, max_length: int, seed: int = 0):
    """Tokenised calibration samples: a seeded sample of the training records, prompt + response."""
    from datasets import Dataset

    records = load_records([data]).records
    random.Random(seed).shuffle(records)
    rows = {"input_ids": [], "attention_mask": []}
    for record in records[:num_samples]:
        example = render(record, template, tokenizer)
        ids = tokenizer(example.prompt + example.response, add_special_tokens=False).input_ids[:max_length]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
    return Dataset.from_dict(rows)


@contextmanager
def cpu_safe_activation_pinning():
    """llm-compressor 0.14's AWQ calls `pin_memory()` on its cached activations unconditionally, to speed up
    host-to-device copies; without an accelerator pinning raises. With no device there is nothing to copy
    to, so on such machines (only) the pinning is skipped for the duration of the call."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def quantize_model(
    model_dir: Path,
    data: Path,
    out: Path,
    method: str = QuantizeSettings.method,
    template: str = "chat",
    num_samples: int = QuantizeSettings.num_samples,
    max_length: int = QuantizeSettings.max_length,
    group_size: int | None = QuantizeSettings.group_size,
) -> Path:
    out = Path(out)
    if out.exists():
        raise OutputExistsError(f"{out} already exists; remove it or choose another --out")
    group_size = group_size_for(model_dir, group_size)  # before llm-compressor, the tokenizer and the weights
    from llmcompressor import oneshot
    from transformers import AutoTokenizer

    from training.checkpoints import publish_directory
    from training.models import load_causal_lm

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = calibration_dataset(Path(data), tokenizer, template, num_samples, max_length)
    model = load_causal_lm(str(model_dir), dtype="auto")
    with cpu_safe_activation_pinning():
        oneshot(
            model=model,
            tokenizer=tokenizer,
            dataset=dataset,
            recipe=build_recipe(method, group_size),
            num_calibration_samples=len(dataset),
            max_seq_length=max_length,
        )
    model.save_pretrained(staging, save_compressed=True)
    tokenizer.save_pretrained(staging)
    details = {"model": str(model_dir), "method": method, "scheme": "W4A16", "group_size": group_size}
    details |= {"calibration_data": {"path": str(data), "sha256": file_sha256(Path(data))}}
    details |= {"calibration_samples": len(dataset)}
    write_manifest(staging, derived_manifest(f"{method}-w4a16", Path(model_dir), **details))
    publish_directory(staging, out)
    return out


def quantize_from_settings(settings: QuantizeSettings) -> Path:
    return quantize_model(
        model_dir=settings.model,
        data=settings.data,
        out=settings.out,
        method=settings.method,
        template=settings.template or "chat",
        num_samples=settings.num_samples,
        max_length=settings.max_length,
        group_size=settings.group_size,
    )
