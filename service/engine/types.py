"""What goes into the engine and what comes out of it, in our own terms (no vLLM import).

Every module outside `engine/` (registry, generation, renderers, routes, tests) speaks these types, so none of
them imports vLLM and a fake engine for fast tests implements `EngineClient` with nothing but the standard
library. `engine/client.py` maps them onto vLLM's types at the boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

NULL_ADAPTER_NAME = "tsumugi-null-adapter"


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling settings for one prompt. Field names are vLLM's `SamplingParams` keywords, so the engine maps
    them by name and a new field is added here and in `pipeline/sampling.py`, nowhere else.

    `None` means "the model's generation_config default, else the engine's"."""

    max_tokens: int
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    # Where `json_schema` came from: the client's response_format, or the tools of a forced tool choice (then
    # written without optional whitespace: compact calls, and no model can pad them until max_tokens).
    json_schema_source: Literal["response_format", "tools"] = "response_format"
    # With json_schema (or json_object): the output may instead be default-format `<tool_call>` blocks, each a
    # JSON object following this schema (`tool_choice: "auto"` with a JSON `response_format`).
    tool_call_schema: dict[str, Any] | None = None
    skip_special_tokens: bool = True  # False when a tool parser looks for special call tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(slots=True)
class ChoiceDelta:
    """What one choice produced since its previous delta (text and tokens, straight from the engine)."""

    index: int
    text: str
    num_new_tokens: int
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None
    token_ids: Sequence[int] = ()  # the new tokens (tool parsers of some formats read ids, not text)


@dataclass(slots=True)
class EngineStep:
    """One engine output for a request: deltas for the choices that advanced."""

    deltas: list[ChoiceDelta]
    num_prompt_tokens: int
    finished: bool


@dataclass(frozen=True, slots=True)
class AdapterHandle:
    """How the engine addresses one adapter: a stable integer id and its directory."""

    name: str
    lora_id: int
    path: str


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """Facts derived at start-up, returned rather than written back into the settings."""

    max_model_len: int
    max_num_seqs: int = 128  # sequences the scheduler runs at once (admission sizes its limits from these)
    max_num_batched_tokens: int = 2048
    default_sampling: dict[str, Any] = field(default_factory=dict)
    null_adapter: AdapterHandle | None = None


class EngineClient(Protocol):
    """The calls the service makes on an engine: vLLM's in `engine/client.py`, a scripted one in fast tests."""

    info: EngineInfo

    def generate(
        self, request_id: str, prompt_token_ids: list[int], params: GenerationParams, adapter: AdapterHandle | None
    ) -> AsyncIterator[EngineStep]:
        """Engine steps of one prompt; closing the iterator early aborts the request in the engine."""
        ...

    async def abort(self, request_ids: list[str]) -> None: ...

    async def add_adapter(self, adapter: AdapterHandle) -> None:
        """Load an adapter version now; `AdapterRejected` with the engine's reason when it cannot."""
        ...

    async def remove_adapter(self, adapter: AdapterHandle) -> None: ...

    async def resident_adapter_ids(self) -> set[int]:
        """Engine ids of the adapters held in memory now; the others are read from disk when next used."""
        ...

    async def check_health(self) -> None: ...

    @property
    def errored(self) -> bool:
        """True once the engine has died (its process is gone); nothing it serves will finish."""
        ...

    async def log_stats(self) -> None: ...

    def shutdown(self) -> None: ...
