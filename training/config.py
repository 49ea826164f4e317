"""SFT configuration: one validated pydantic model, loaded from a YAML file; CLI flags override single keys.

The YAML layout mirrors the model: top-level run fields plus `lora:`, `data:` and `optim:` sections. Every field
is declared once, here, with its type, default, range and help text; `python -m training sft` derives its flags
from these fields through `CLI_FLAGS` (`sft_flags`, added by `tsumugi.cli_flags.add_flags` as every command's
flags are), so a flag cannot disagree with the key it sets.

Values are checked when loaded, and every problem becomes one line naming the dotted key
(`config 'optim.lr': Input should be greater than 0, got -1.0`), raised as `ConfigError`. Unknown keys are errors
too, so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from training.data.templates import TEMPLATE_NAMES
from training.errors import ConfigError
from training.licences import IntendedUse
from tsumugi.cli_flags import Flag

__all__ = [
    "CLI_FLAGS",
    "ConfigError",
    "SFTConfig",
    "config_field",
    "describe",
    "load_config",
    "overrides_from_flags",
    "sft_flags",
]


def _not_a_bool(value: object) -> object:
    """pydantic reads `true` as 1 for a number; for a learning rate or a seed that is a mistake, not a value."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def _one_message(message: str) -> WrapValidator:
    """For union fields pydantic reports one error per member of the union; the user needs one sentence."""

    def validate(value: object, handler: Any) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(message) from None

    return WrapValidator(validate)


Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool)]
Text = Annotated[str, Field(min_length=1)]
Method = Literal["lora", "qlora"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Scheduler = Literal["constant", "linear", "cosine", "constant_with_warmup"]
Template = Literal[TEMPLATE_NAMES]
Checkpointing = Annotated[
    bool | Annotated[float, Field(gt=0, lt=1)],
    _one_message("must be true, false or a fraction of the layers between 0 and 1"),
]
Packing = Annotated[bool | Literal["auto"], _one_message("must be true, false or auto")]
TargetModules = Annotated[
    Text | Annotated[list[Text], Field(min_length=1)], _one_message("must be 'all-linear' or a list of module names")
]
Records = Annotated[
    Annotated[list[StrictInt], Field(min_length=1)] | None,
    _one_message("must be a non-empty list of record numbers (0-based)"),
]


class _Section(BaseModel):
    """Shared rules: unknown keys are errors, inf/nan are not numbers, and assignments are validated too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class LoraSettings(_Section):
    r: Int = Field(16, gt=0, description="LoRA rank")
    alpha: Int = Field(32, gt=0, description="LoRA alpha (updates are scaled by alpha / r)")
    dropout: Float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: TargetModules = Field(
        "all-linear",
        description="Linear layers to adapt; all-linear: every Linear except the LM head, what vLLM can serve",
    )

    @field_validator("target_modules")
    @classmethod
    def _keyword(cls, value: str | list[str]) -> str | list[str]:
        """`--target-modules all-linear` arrives as a one-item list; peft wants the keyword as a plain string."""
        return "all-linear" if value == ["all-linear"] else value


class DataSettings(_Section):
    paths: Annotated[list[Text], Field(min_length=1)] = Field(description="Alpaca .json/.jsonl or chat .jsonl files")
    template: Template = Field("alpaca-ja", description="prompt format the model is trained with")
    validation_fraction: Float = Field(0.05, ge=0, lt=1, description="share of records held out for validation")
    max_length: Int = Field(512, gt=0, description="records are truncated to this many tokens")
    packing: Packing = Field(
        "auto",
        description="padding-free rows of whole records (auto: only with flash-attention's variable-length kernels)",
    )
    skip_invalid: bool = Field(False, description="skip (and report) invalid records instead of stopping")
    records: Records = Field(None, description="train on only these records (0-based, load order); null: all")

    @field_validator("records")
    @classmethod
    def _distinct(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists a record twice")
        return value


class OptimSettings(_Section):
    lr: Float = Field(2e-4, gt=0, description="peak learning rate")
    scheduler: Scheduler = Field("cosine", description="learning-rate schedule")
    warmup_ratio: Float = Field(0.0, ge=0, lt=1, description="share of the steps spent warming up")
    weight_decay: Float = Field(0.0, ge=0, description="AdamW weight decay")
    epochs: Float = Field(1.0, ge=0, description="passes over the training records (resets max_steps)")
    max_steps: Int = Field(-1, ge=-1, description="optimizer steps; > 0 overrides epochs, -1: use epochs")
    batch_size: Int = Field(8, gt=0, description="records per device per step")
    grad_accum: Int = Field(1, gt=0, description="gradient accumulation steps")

    @model_validator(mode="after")
    def _length(self) -> OptimSettings:
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set max_steps or epochs")
        return self


class SFTConfig(_Section):
    """One fine-tuning run. Defaults live here only (the CLI has none of its own).

    Coercion: pydantic's lax mode. A numeric string is accepted for a number, so YAML `lr: 2e-4`, which PyYAML
    reads as the string '2e-4' (YAML 1.1 wants a dot in a float), is the float 2e-4; an integer field takes
    '12' or 12.0 but not 12.5 or 'abc'; true/false is not a number; booleans take true/false (and 0/1, yes/no).
    `gradient_checkpointing: 1` is true (all layers) and `0` false, the ends of the fraction.
    """

    base: Text = Field(description="base model: a local directory or a Hugging Face name")
    out: Text = Field(description="output directory for the adapter (must not exist)")
    method: Method = Field("lora", description="lora: 16-bit base; qlora: 4-bit NF4 base")
    seed: Int = Field(0, ge=0, lt=2**32, description="seed for the split, the data order and the LoRA init")
    precision: Precision = Field("auto", description="compute dtype; auto picks bf16 where it is native")
    gradient_checkpointing: Checkpointing = Field(
        False, description="recompute the layers in backward: true, false, or a fraction of the layers"
    )
    save_steps: Int = Field(50, gt=0, description="checkpoint every this many steps")
    save_total_limit: Int = Field(2, gt=0, description="checkpoints kept")
    eval_steps: Int = Field(0, ge=0, description="validate every this many steps; 0: once per epoch and at the end")
    logging_steps: Int = Field(1, gt=0, description="log the loss every this many steps")
    resume: bool = Field(False, description="continue the interrupted run in <out>.partial/")
    keep_checkpoints: bool = Field(False, description="keep <out>.partial/ and its checkpoints after publishing")
    intended_use: IntendedUse | None = Field(
        None, description="what the model is for; checked against the declared licence terms (training/licences.py)"
    )
    accept_licence_risk: Text | None = Field(
        None, description="train despite licence conflicts, for this reason (recorded in the manifest)"
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    data: DataSettings
    optim: OptimSettings = Field(default_factory=OptimSettings)

    def to_dict(self) -> dict:
        """Plain nested dict, as recorded in `sft_config.json` and the adapter's manifest."""
        return self.model_dump()


def load_config(path: Path | None, overrides: dict[str, object]) -> SFTConfig:
    """YAML file (optional) then dotted-key overrides such as {"optim.lr": 1e-3}; `None` overrides are ignored."""
    values = _read_yaml(Path(path)) if path is not None else {}
    for dotted, value in overrides.items():
        if value is not None:
            _set_dotted(values, dotted, value)
    try:
        return SFTConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(describe(error)) from error


def _read_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the config file must be a YAML mapping")
    return loaded


def _set_dotted(values: dict, dotted: str, value: object) -> None:
    section = values
    *parents, leaf = dotted.split(".")
    for depth, parent in enumerate(parents):
        section = section.setdefault(parent, {})
        if not isinstance(section, dict):
            raise ConfigError(f"config '{'.'.join(parents[: depth + 1])}': must be a mapping, to set '{dotted}'")
    section[leaf] = value


def describe(error: ValidationError) -> str:
    """All problems on one line, each as `config '<dotted.key>': <what is wrong>, got <value>`."""
    return "; ".join(_describe_one(problem) for problem in error.errors())


def _describe_one(problem: Any) -> str:
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"]).lstrip(".")
    kind, value = problem["type"], problem.get("input")
    if kind == "extra_forbidden":
        return f"config '{key}': unknown key"
    if kind == "missing":
        # A missing section (data) is named by the flag of its own required key (--data for data.paths).
        flags = [
            name
            for name, dotted in CLI_FLAGS.items()
            if dotted == key or (dotted.startswith(f"{key}.") and config_field(dotted).is_required())
        ]
        return f"config '{key}': is required" + (f": set it in the config file or with {flags[0]}" if flags else "")
    message = str(problem["ctx"]["error"]) if kind == "value_error" else problem["msg"]
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"config '{key or 'top level'}': {message}" + (
        "" if isinstance(value, dict | BaseModel) else f", got {shown}"
    )


CLI_FLAGS: dict[str, str] = {  # `python -m training sft` flag -> the dotted key it sets; others: YAML only
    "--base": "base",
    "--data": "data.paths",
    "--out": "out",
    "--method": "method",
    "--template": "data.template",
    "--max-steps": "optim.max_steps",
    "--epochs": "optim.epochs",
    "--lr": "optim.lr",
    "--scheduler": "optim.scheduler",
    "--warmup-ratio": "optim.warmup_ratio",
    "--lora-r": "lora.r",
    "--lora-alpha": "lora.alpha",
    "--lora-dropout": "lora.dropout",
    "--target-modules": "lora.target_modules",
    "--batch-size": "optim.batch_size",
    "--grad-accum": "optim.grad_accum",
    "--seed": "seed",
    "--precision": "precision",
    "--max-length": "data.max_length",
    "--validation-fraction": "data.validation_fraction",
    "--save-steps": "save_steps",
    "--eval-steps": "eval_steps",
    "--gradient-checkpointing": "gradient_checkpointing",
    "--packing": "data.packing",
    "--skip-invalid": "data.skip_invalid",
    "--resume": "resume",
    "--keep-checkpoints": "keep_checkpoints",
    "--intended-use": "intended_use",
    "--accept-licence-risk": "accept_licence_risk",
}
EXCLUSIVE_FLAGS = ("--max-steps", "--epochs")  # a run length is steps or epochs, not both


def config_field(dotted: str) -> FieldInfo:
    """The model field behind a dotted key such as 'optim.lr' (KeyError if there is none)."""
    model: type[BaseModel] = SFTConfig
    *parents, leaf = dotted.split(".")
    for parent in parents:
        model = model.model_fields[parent].annotation
    return model.model_fields[leaf]


def sft_flags() -> list[Flag]:
    """`--config`, then one flag per `CLI_FLAGS` entry, its type, choices and help taken from the field. The
    default is SUPPRESS: a flag not given sets nothing, so the YAML file's value (or the model's default) stands."""
    flags = [Flag("--config", "config", "YAML config; flags given here override it", kind={"type": Path})]
    for flag, dotted in CLI_FLAGS.items():
        field = config_field(dotted)
        default = "required" if field.default is PydanticUndefined else f"default: {field.default}"
        flags.append(
            Flag(
                flag,
                dotted,
                help=f"{field.description} ({default}; config key {dotted})".replace("%", "%%"),
                default=argparse.SUPPRESS,
                kind=_argument_kind(field.annotation, flag.lstrip("-").upper().replace("-", "_")),
                exclusive="run length" if flag in EXCLUSIVE_FLAGS else None,
            )
        )
    return flags


def _argument_kind(annotation: Any, metavar: str) -> dict[str, Any]:
    """argparse settings for a field type: bool -> --x/--no-x, Literal -> choices, list -> one or more values.
    A union with bool (packing, gradient_checkpointing) is a switch on the command line, as it always was."""
    members = _members(annotation)
    if bool in members:
        return {"action": argparse.BooleanOptionalAction}
    lists = [member for member in members if get_origin(member) is list]
    scalar = _members(get_args(lists[0])[0])[0] if lists else members[0]
    kind: dict[str, Any] = {"nargs": "+"} if lists else {}
    if get_origin(scalar) is Literal:
        return kind | {"choices": list(get_args(scalar))}
    return kind | {"type": scalar, "metavar": metavar}


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a (possibly Annotated, possibly optional) union, each with its Annotated unwrapped."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal or get_args(annotation) == () or get_origin(annotation) is list:
        return [annotation]
    return [member for option in get_args(annotation) if option is not type(None) for member in _members(option)]


def overrides_from_flags(args: argparse.Namespace) -> dict[str, object]:
    """The dotted keys the user set on the command line; `--epochs` also drops a step count from the YAML."""
    given = {dotted: getattr(args, dotted) for dotted in CLI_FLAGS.values() if hasattr(args, dotted)}
    if "optim.epochs" in given:
        given["optim.max_steps"] = -1
    return given
