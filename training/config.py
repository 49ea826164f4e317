"""SFT configuration as typed dataclasses, loadable from one YAML file; CLI flags override single fields.

YAML layout mirrors the dataclasses (top-level run fields plus `lora:`, `data:`, `optim:` sections); unknown
keys are errors so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.templates import TEMPLATE_NAMES

METHODS = ("lora", "qlora")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULERS = ("constant", "linear", "cosine", "constant_with_warmup")


class ConfigError(ValueError):
    """A configuration value that cannot work, named by its key."""


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # "all-linear" = every Linear except the LM head: what vLLM can apply as LoRA on Llama-style models.
    target_modules: str | list[str] = "all-linear"


@dataclass
class DataSettings:
    paths: list[str] = field(default_factory=list)
    template: str = "alpaca-ja"
    validation_fraction: float = 0.05
    max_length: int = 512
    # True: padding-free rows of whole records; False: padded batches of similar-length records; "auto": packing
    # only where attention has variable-length kernels (flash-attention on CUDA). See SFTRecipe._choose_packing.
    packing: bool | str = "auto"
    skip_invalid: bool = False
    records: list[int] | None = None  # train on only these records (0-based, load order); None: all


@dataclass
class OptimSettings:
    lr: float = 2e-4
    scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1


@dataclass
class SFTConfig:
    base: str = ""
    out: str = ""
    method: str = "lora"
    seed: int = 0
    precision: str = "auto"
    # true: recompute every decoder layer in backward; a fraction in (0, 1): only that share of the layers, so
    # activation memory and recompute time both scale with it; false: keep all activations.
    gradient_checkpointing: bool | float = False
    save_steps: int = 50
    save_total_limit: int = 2
    eval_steps: int = 0  # 0: evaluate once per epoch and at the end
    logging_steps: int = 1
    resume: bool = False
    keep_checkpoints: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)

    def validate(self) -> SFTConfig:
        _require(bool(self.base), "base", "is required (a model directory)")
        _require(bool(self.out), "out", "is required (the output directory)")
        _require(bool(self.data.paths), "data.paths", "needs at least one data file")
        _require(self.method in METHODS, "method", f"must be one of {METHODS}")
        _require(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
        _require(self.data.template in TEMPLATE_NAMES, "data.template", f"must be one of {TEMPLATE_NAMES}")
        checkpointing = self.gradient_checkpointing
        _require(
            isinstance(checkpointing, bool) or (isinstance(checkpointing, float) and 0.0 < checkpointing < 1.0),
            "gradient_checkpointing",
            "must be true, false or a fraction of the layers between 0 and 1",
        )
        _require(self.data.packing in (True, False, "auto"), "data.packing", "must be true, false or auto")
        records = self.data.records
        _require(
            records is None or (bool(records) and all(type(i) is int for i in records)),
            "data.records",
            "must be a non-empty list of record numbers (0-based)",
        )
        _require(records is None or len(set(records)) == len(records), "data.records", "lists a record twice")
        _require(self.optim.scheduler in SCHEDULERS, "optim.scheduler", f"must be one of {SCHEDULERS}")
        _require(self.lora.r > 0 and self.lora.alpha > 0, "lora.r/lora.alpha", "must be positive")
        _require(self.optim.lr > 0, "optim.lr", "must be positive")
        _require(self.optim.batch_size > 0 and self.optim.grad_accum > 0, "optim.batch_size", "must be positive")
        _require(self.optim.max_steps > 0 or self.optim.epochs > 0, "optim", "set max_steps or epochs")
        _require(self.save_steps > 0, "save_steps", "must be positive")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config '{key}' {message}")


def _build(cls: type, values: dict, prefix: str):
    """Instantiate a dataclass from a mapping, recursing into nested dataclass fields."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix or 'top level'}' must be a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config keys {[prefix + k for k in unknown]}")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory if known[name].default_factory is not dataclasses.MISSING else None
        if default is not None and dataclasses.is_dataclass(default):
            kwargs[name] = _build(default, value, f"{prefix}{name}.")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_config(path: Path | None, overrides: dict[str, object]) -> SFTConfig:
    """YAML file (optional) then dotted-key overrides such as {"optim.lr": 1e-3}; `None` overrides are ignored."""
    values: dict = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config file must be a YAML mapping")
        values = loaded
    for dotted, value in overrides.items():
        if value is None:
            continue
        section = values
        *parents, leaf = dotted.split(".")
        for parent in parents:
            section = section.setdefault(parent, {})
        section[leaf] = value
    return _build(SFTConfig, values, "").validate()
