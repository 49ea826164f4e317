"""Service settings: one frozen pydantic-settings class, read from flags and `TSUMUGI_*` variables.

Flags are named like `vllm serve`'s where one exists, so a deployment can move between the two; every flag
is also an environment variable (`--max-model-len` is `TSUMUGI_MAX_MODEL_LEN`) so Kubernetes can configure
the service from a ConfigMap and a Secret. Values derived at start-up (context length, EOS ids) live on the
engine, never written back here.
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.errors import StartupError
from tsumugi.cli_flags import Flag, add_flags
from tsumugi.default_model import DEFAULT_MODEL

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.32 config/lora.py: max_lora_rank's choices


class LoRAModule(BaseModel, frozen=True, extra="forbid"):
    """An adapter to serve: `NAME=PATH`, or `vllm serve`'s JSON form `{"name": ..., "path": ...,
    "base_model_name": ...}` (what KServe's LLMInferenceService and vLLM's docs write)."""

    name: str
    path: Path
    base_model_name: str | None = None  # vLLM's parent for /v1/models; here it must name the served model

    @classmethod
    def parse(cls, spec: str) -> LoRAModule:
        """`NAME=PATH` or a JSON object; told apart as vLLM does (a JSON object starts with a brace)."""
        if spec.lstrip().startswith("{"):
            try:
                return cls.model_validate_json(spec)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"LoRA module {spec!r}: {problems}") from None
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"LoRA module must be NAME=PATH or a JSON object, got {spec!r}")
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


def _lora_module_specs(value: object) -> object:
    """`TSUMUGI_LORA_MODULES`: `a=/x,b=/y`, one JSON object, or a JSON list of objects (JSON holds commas, so it
    is never split); flags arrive as a list already, one spec per item."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"LoRA modules: not a JSON list ({exc})") from None
        return [json.dumps(item) if isinstance(item, dict) else item for item in items]
    return [text] if text.startswith("{") else _split_csv(text)


def parse_json_object(value: object) -> object:
    """A flag or variable holding a JSON object (`--kv-events-config '{"enable_kv_cache_events": true}'`)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON object, got {value!r} ({exc})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"expected a JSON object, got {value!r}")
    return parsed


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
    lora_modules: Annotated[list[LoRAModule], NoDecode] = Field(
        default=[], description='adapters as NAME=PATH or JSON {"name": ..., "path": ..., "base_model_name": ...}'
    )
    enable_lora: bool = Field(
        default=False,
        description="accepted from `vllm serve` command lines and changes nothing: LoRA is on whenever adapters "
        "can be served (--lora-modules, --adapter-dir)",
    )
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
    resolve_adapters_on_request: bool = Field(
        default=False,
        description="a request naming an unknown adapter loads --adapter-dir/<name> when that directory exists "
        "(vLLM's filesystem resolver); same checks as the admin API",
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
    block_size: int | None = Field(default=None, gt=0, description="tokens per KV-cache block (default: platform's)")
    kv_events_config: Annotated[dict | None, NoDecode, BeforeValidator(parse_json_object)] = Field(
        default=None,
        description='vLLM\'s KVEventsConfig as JSON, e.g. {"enable_kv_cache_events": true, "publisher": "zmq", '
        '"endpoint": "tcp://*:5557"}: publish KV-cache block events for prefix-aware routers',
    )
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    data_parallel_size: int = Field(default=1, ge=1)
    nnodes: int = Field(default=1, ge=1, description="nodes one engine spans; this service runs on node 0")
    node_rank: int = Field(default=0, ge=0, description="this node's rank: 0 (the leader) only")
    master_addr: str | None = Field(default=None, description="multi-node: the leader's address (default: vLLM's)")
    master_port: int | None = Field(
        default=None, ge=1, le=65535, description="multi-node: the leader's port (default: vLLM's)"
    )
    enforce_eager: bool = False
    seed: int = 0
    api_keys: Annotated[list[str], NoDecode] = Field(default=[], description="API keys (comma-separated in env)")
    api_keys_file: Path | None = Field(default=None, description="YAML file of named keys with limits")
    no_auth: bool = Field(default=False, description="serve without API keys (say so explicitly)")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    ssl_certfile: Path | None = Field(default=None, description="serve HTTPS with this certificate (PEM)")
    ssl_keyfile: Path | None = Field(default=None, description="the certificate's private key (PEM)")
    drain_timeout: float = Field(default=30.0, ge=0, description="seconds running requests get after SIGTERM")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("lora_modules", mode="before")
    @classmethod
    def _parse_lora_modules(cls, value: object) -> object:
        items = _lora_module_specs(value)
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

    @field_validator("node_rank")
    @classmethod
    def _leader_only(cls, value: int) -> int:
        """The service is the engine's leader; vLLM's other nodes run vLLM itself, headless (no API server)."""
        if value > 0:
            raise ValueError(
                "the service runs on node 0 only; on the other nodes run `vllm serve MODEL --headless --nnodes N "
                "--node-rank R --master-addr LEADER --master-port PORT` with the same engine flags"
            )
        return value

    @field_validator("ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value}: no such file")
        return value

    @model_validator(mode="after")
    def _certificate_loads(self) -> Settings:
        """A certificate and key that TLS cannot use are refused here, in one line, not by uvicorn's traceback
        once the server starts (a key file alone is refused; a certificate file may hold its key too)."""
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("--ssl-keyfile is the key of --ssl-certfile; pass both")
        if self.ssl_certfile is not None:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"--ssl-certfile/--ssl-keyfile cannot serve TLS: {exc}") from None
        return self

    @model_validator(mode="after")
    def _resolver_needs_a_dir(self) -> Settings:
        if self.resolve_adapters_on_request and self.adapter_dir is None:
            raise ValueError("--resolve-adapters-on-request loads from --adapter-dir; pass both")
        return self

    @model_validator(mode="after")
    def _lora_parents_are_served(self) -> Settings:
        """vLLM's JSON form may name the adapter's base model: it must be the one served (by name or path)."""
        for module in self.lora_modules:
            if module.base_model_name not in (None, self.model_name, self.model):
                raise ValueError(
                    f"adapter '{module.name}': base_model_name '{module.base_model_name}' is not the served model "
                    f"('{self.model_name}')"
                )
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
    "lora_modules": {"nargs": "+", "metavar": "NAME=PATH|JSON"},
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
