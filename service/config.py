"""Service settings: one frozen pydantic-settings class, read from flags and `TSUMUGI_*` variables.

Flags are named like `vllm serve`'s where one exists, so a deployment can move between the two; every flag
is also an environment variable (`--max-model-len` is `TSUMUGI_MAX_MODEL_LEN`) so Kubernetes can configure
the service from a ConfigMap and a Secret. Values derived at start-up (context length, EOS ids) live on the
engine, never written back here.
"""

from __future__ import annotations

import argparse
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.errors import StartupError
from tsumugi.cli_flags import Flag, add_flags
from tsumugi.default_model import DEFAULT_MODEL

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.32 config/lora.py: max_lora_rank's choices


class LoRAModule(BaseModel, frozen=True):
    """An adapter to serve: `NAME=PATH` on the command line."""

    name: str
    path: Path

    @classmethod
    def parse(cls, spec: str) -> LoRAModule:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"LoRA module must be NAME=PATH, got {spec!r}")
        return cls(name=name.strip(), path=Path(path.strip()))


_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_BINARY_UNITS = {"ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_bytes(value: object) -> object:
    """`4GiB`, `512MiB`, `2G` or a plain number of bytes (vLLM's `--kv-cache-memory-bytes` takes these too)."""
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", value.lower())
    if match is None:
        raise ValueError(f"expected a size such as 4GiB, 512MiB or 1073741824, got {value!r}")
    number, unit = match.groups()
    return int(float(number) * {**_UNITS, **_BINARY_UNITS}[unit or ""])


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Everything the service is configured with; defaults suit a CPU box serving a small model.

    Each field is a flag (`cli_flags` derives them, so a flag cannot disagree with its field) and a
    `TSUMUGI_*` variable. `None` limits are derived from the engine once it is up (see `access/admission.py`)."""

    model_config = SettingsConfigDict(env_prefix="TSUMUGI_", frozen=True, extra="ignore")

    model: str = Field(default=DEFAULT_MODEL, description="model directory or hub id")
    served_model_name: str | None = None
    tokenizer: str | None = None
    # auto: float32 for plain models on CPU (vLLM 0.32's CPU bf16 path gave wrong greedy text on SmolLM2),
    # bfloat16 for 4-bit weight-only models on CPU (their kernel has no float32 path), the model's own on GPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: str | None = None
    max_model_len: int | None = Field(default=None, gt=0)
    lora_modules: Annotated[list[LoRAModule], NoDecode] = Field(default=[], description="adapters as NAME=PATH")
    max_loras: int = Field(default=1, ge=1, description="adapters the engine runs at once (its LoRA slots)")
    max_lora_rank: int = Field(
        default=16, description=f"the highest adapter rank the engine accepts, one of {list(LORA_RANKS)}"
    )
    max_cpu_loras: int | None = Field(
        default=None, gt=0, description="adapters kept loaded in memory beyond the slots (default: all of them)"
    )
    adapter_dir: Path | None = Field(
        default=None,
        description="directory the admin API loads adapters from (POST/PUT /v1/adapters); enables runtime adapters",
    )
    watch_adapter_dir: bool = Field(
        default=False,
        description="serve every complete subdirectory of --adapter-dir (with a tsumugi-ready marker) by its name",
    )
    admin_api_keys: Annotated[list[str], NoDecode] = Field(
        default=[], description="keys for the admin API (/v1/adapters), separate from user keys"
    )
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    # KV-cache size; on CPU, unset means "derived from the model" (see engine.cpu_kv_cache_bytes), because
    # vLLM's CPU worker otherwise reserves gpu_memory_utilization of the machine's memory and refuses to
    # start whenever other programs hold some of it.
    kv_cache_memory_bytes: Annotated[int | None, BeforeValidator(parse_bytes)] = Field(
        default=None, gt=0, description="KV-cache size (4GiB, 512MiB, bytes); on CPU default: derived, <= 4 GiB"
    )
    max_num_seqs: int | None = Field(default=None, gt=0, description="sequences the engine runs at once")
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    max_num_queued_requests: int | None = Field(
        default=None, ge=0, description="sequences admitted beyond the running ones; past it 429 (default: derived)"
    )
    max_queued_prompt_tokens: int | None = Field(
        default=None, gt=0, description="prompt tokens admitted and not yet started; past it 429 (default: derived)"
    )
    max_request_body_bytes: Annotated[int, BeforeValidator(parse_bytes)] = Field(
        default=16 * 1024**2, gt=0, description="larger request bodies get 413 before they are read"
    )
    request_timeout: float = Field(
        default=600.0, gt=0, description="seconds a request may queue and generate; X-Request-Timeout may lower it"
    )
    chat_template: str | None = Field(
        default=None, description="chat template for the base model: a file, or the template itself"
    )
    enable_auto_tool_choice: bool = Field(default=False, description='let the model decide to call tools ("auto")')
    tool_call_parser: str | None = Field(
        default=None,
        description="vLLM tool parser reading the model's calls; default: hermes, for templates without a tool format",
    )
    require_licence_metadata: bool = Field(
        default=False,
        description="refuse to serve a model or adapter without licence terms (its training manifest's licence "
        "record, or licence.yaml in its directory)",
    )
    tensor_parallel_size: int = Field(default=1, ge=1)
    enforce_eager: bool = False
    seed: int = 0
    api_keys: Annotated[list[str], NoDecode] = Field(default=[], description="API keys (comma-separated in env)")
    api_keys_file: Path | None = Field(default=None, description="YAML file of named keys with limits")
    no_auth: bool = Field(default=False, description="serve without API keys (say so explicitly)")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    drain_timeout: float = Field(default=30.0, ge=0, description="seconds running requests get after SIGTERM")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("lora_modules", mode="before")
    @classmethod
    def _parse_lora_modules(cls, value: object) -> object:
        items = _split_csv(value)
        if isinstance(items, list):
            return [LoRAModule.parse(item) if isinstance(item, str) else item for item in items]
        return items

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, value: int) -> int:
        if value not in LORA_RANKS:
            raise ValueError(f"must be one of {list(LORA_RANKS)} (the ranks vLLM accepts)")
        return value

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        return _split_csv(value)

    @model_validator(mode="after")
    def _auth_is_explicit(self) -> Settings:
        """A blank key list (an empty Secret) must not open the API silently: keys, a key file, or --no-auth."""
        if self.no_auth and (self.api_keys or self.api_keys_file):
            raise ValueError("--no-auth contradicts the API keys given; choose one")
        if not self.no_auth and not self.api_keys and self.api_keys_file is None:
            raise ValueError(
                "no API keys configured (TSUMUGI_API_KEYS / --api-key / --api-keys-file are empty); "
                "pass --no-auth to serve without authentication"
            )
        return self

    @model_validator(mode="after")
    def _watch_needs_a_dir(self) -> Settings:
        if self.watch_adapter_dir and self.adapter_dir is None:
            raise ValueError("--watch-adapter-dir watches --adapter-dir; pass both")
        return self

    @model_validator(mode="after")
    def _parser_needs_auto(self) -> Settings:
        if self.tool_call_parser and not self.enable_auto_tool_choice:
            raise ValueError("--tool-call-parser is used only with --enable-auto-tool-choice; pass both")
        return self

    def read_chat_template(self) -> str | None:
        """`--chat-template` as a template: a file's contents, or the value itself (as `vllm serve` takes it)."""
        if self.chat_template is None:
            return None
        path = Path(self.chat_template)
        if "{" not in self.chat_template and path.is_file():
            return path.read_text(encoding="utf-8")
        if "{" not in self.chat_template:
            raise StartupError(f"--chat-template {self.chat_template}: no such file, and not a Jinja template")
        return self.chat_template

    @property
    def model_name(self) -> str:
        """The name clients put in `model` to reach the base model."""
        return self.served_model_name or self.model


# Flags whose command-line form differs from the field: a repeatable --api-key, several NAME=PATH at once.
_FLAG_FORMS: dict[str, dict] = {
    "api_keys": {"flag": "--api-key", "action": "append", "help": "an API key (repeatable)"},
    "admin_api_keys": {"flag": "--admin-api-key", "action": "append", "help": "an admin API key (repeatable)"},
    "lora_modules": {"nargs": "+", "metavar": "NAME=PATH"},
}


def settings_flags() -> list[Flag]:
    """One flag per `Settings` field (`max_model_len` is `--max-model-len`); values stay strings and pydantic
    converts and checks them, so the field is the only declaration of a setting. A flag not given sets nothing
    (SUPPRESS), so the environment's value, or the field's default, stands."""
    flags = []
    for name, field in Settings.model_fields.items():
        kind = dict(_FLAG_FORMS.get(name, {}))
        option = kind.pop("flag", "--" + name.replace("_", "-"))
        description = kind.pop("help", field.description)
        if field.annotation is bool:
            kind.setdefault("action", "store_true")
        if get_origin(field.annotation) is Literal:
            kind["choices"] = list(get_args(field.annotation))
        flags.append(Flag(option, name, description, default=argparse.SUPPRESS, kind=kind))
    return flags


def cli_flags(parser: argparse.ArgumentParser) -> None:
    """`python -m service`'s flags, through the project's one flag generator."""
    add_flags(parser, settings_flags())


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment alone (the CLI builds its own instance with flag overrides)."""
    return Settings()
