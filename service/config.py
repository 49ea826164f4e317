"""Service settings: one frozen pydantic-settings class, read from flags and `TSUMUGI_*` variables.

Flags are named like `vllm serve`'s where one exists, so a deployment can move between the two; every flag
is also an environment variable (`--max-model-len` is `TSUMUGI_MAX_MODEL_LEN`) so Kubernetes can configure
the service from a ConfigMap and a Secret. Values derived at start-up (context length, EOS ids) live on the
engine, never written back here.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    """Everything the service is configured with; defaults suit a CPU box serving a small model."""

    model_config = SettingsConfigDict(env_prefix="TSUMUGI_", frozen=True, extra="ignore")

    model: str = "models/smollm2-135m-instruct"
    served_model_name: str | None = None
    tokenizer: str | None = None
    # float32 on CPU by default: vLLM 0.32's CPU bf16 path gave wrong greedy text on SmolLM2 where fp32
    # agrees with Hugging Face transformers.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: str | None = None
    max_model_len: int | None = Field(default=None, gt=0)
    lora_modules: Annotated[list[LoRAModule], NoDecode] = []
    max_loras: int = Field(default=1, ge=1)
    max_lora_rank: int = Field(default=16, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    # KV-cache size; on CPU, unset means "derived from the model" (see engine.cpu_kv_cache_bytes), because
    # vLLM's CPU worker otherwise reserves gpu_memory_utilization of the machine's memory and refuses to
    # start whenever other programs hold some of it.
    kv_cache_memory_bytes: Annotated[int | None, BeforeValidator(parse_bytes)] = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    max_num_queued_requests: int | None = Field(default=None, gt=0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    enforce_eager: bool = False
    seed: int = 0
    api_keys: Annotated[list[str], NoDecode] = []
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    drain_timeout: float = Field(default=30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("lora_modules", mode="before")
    @classmethod
    def _parse_lora_modules(cls, value: object) -> object:
        items = _split_csv(value)
        if isinstance(items, list):
            return [LoRAModule.parse(item) if isinstance(item, str) else item for item in items]
        return items

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        return _split_csv(value)

    @property
    def model_name(self) -> str:
        """The name clients put in `model` to reach the base model."""
        return self.served_model_name or self.model


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment alone (the CLI builds its own instance with flag overrides)."""
    return Settings()
