"""vLLM's runtime adapter bodies, `POST /v1/load_lora_adapter` and `POST /v1/unload_lora_adapter`, field for field
as vLLM 0.32 declares them (`vllm/entrypoints/serve/lora/protocol.py`), so that the controllers written for vLLM
(production-stack's LoraAdapter, llm-d's multi-LoRA guides) can drive this service unchanged.

A field vLLM does not have is refused with a 400 naming it; a field vLLM has and we cannot honour is refused the
same way (`is_3d_lora_weight`, the MoE layout), never silently dropped.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LoadLoRAAdapter(BaseModel):
    """Load `lora_path` (under `--adapter-dir`) as `lora_name`; `load_inplace` loads a new version of a name that
    is served already, as vLLM reloads one in place (without it, a served name is a 400, as in vLLM)."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str
    lora_path: str
    load_inplace: bool = False
    is_3d_lora_weight: bool = False

    @field_validator("is_3d_lora_weight")
    @classmethod
    def _two_dimensional_only(cls, value: bool) -> bool:
        if value:
            raise ValueError("3D (MoE) LoRA weights are not supported by this server")
        return value


class UnloadLoRAAdapter(BaseModel):
    """Stop serving `lora_name`. vLLM's optional `lora_int_id` is accepted and not needed: names are unique."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str
    lora_int_id: int | None = Field(default=None)
