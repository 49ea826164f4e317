"""What chat and text completions share: the sampling fields, and the checks every raw body passes first.

Requests are validated here and in `chat.py` / `completions.py`, once, with pydantic; `pipeline/sampling.py`
turns a valid request into `GenerationParams`, our engine-neutral sampling settings, so nothing past those
modules looks at request fields. Responses are plain dicts built in `api/render/`: on the hot path a dict is
cheaper than a model and the shape is fixed by OpenAI, not by us.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.errors import InvalidRequest

MAX_N = 16
MAX_STOP_SEQUENCES = 16
INT64 = (-(2**63), 2**63 - 1)  # seeds travel to the engine process as 64-bit integers
INT32_MAX = 2**31 - 1


def unencodable_field(value: Any, path: str) -> str | None:
    """The dotted path of the first string (key or value) that UTF-8 cannot encode, such as a lone surrogate
    (`"\\ud800"` is valid JSON but no text): the tokenizer, the engine and our own error messages would fail
    on it later, as a 500, so it is refused here as the client's mistake."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unencodable_field(key, path) or unencodable_field(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unencodable_field(item, f"{path}[{index}]")
            if found:
                return found
    return None


def refuse_unusable(data: Any, unsupported: dict[str, str]) -> Any:
    """A raw request body, checked before pydantic reads it: no unencodable text anywhere, and none of the
    `unsupported` fields (name → why), each refused by name."""
    field = unencodable_field(data, "")
    if field:
        raise InvalidRequest(f"{field}: contains a character that cannot be encoded (a lone surrogate)", param=field)
    if isinstance(data, dict):
        for name, reason in unsupported.items():
            if data.get(name) is not None:
                raise InvalidRequest(f"{name}: {reason}", param=name)
    return data


class StreamOptions(BaseModel):
    include_usage: bool = False


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


# Fields OpenAI's API takes that would change the answer and that this server does not implement: refused by
# name (a client relying on one must hear it), with what to do instead where there is something.
UNSUPPORTED_FIELDS = {
    "logit_bias": "logit_bias is not supported",
    "functions": "the legacy functions field is not supported; send tools",
    "function_call": "the legacy function_call field is not supported; send tool_choice",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "this model does not reason; reasoning_effort is not supported",
    "best_of": "best_of is not supported; use n",
    "suffix": "suffix is not supported",
}


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions. Unknown fields are refused (400 naming the field), never
    silently ignored; OpenAI's bookkeeping fields that change nothing about the answer are accepted."""

    model_config = ConfigDict(extra="forbid")

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=INT64[0], le=INT64[1])
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    user: str | None = None
    # vLLM extensions.
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0, le=INT32_MAX)
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    min_p: Probability = 0.0
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    # OpenAI's bookkeeping: accepted, and nothing about the answer depends on them.
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    store: bool | None = None
    # What vllm-router (the vLLM project's router, sglang's lineage) adds to every request it forwards, always at
    # these values: accepted at exactly what this server does anyway (stop strings trimmed, special tokens
    # skipped, no hidden states), refused at any other value (400 naming the field).
    no_stop_trim: Literal[False] = False
    skip_special_tokens: Literal[True] = True
    return_hidden_states: Literal[False] = False

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data: Any) -> Any:
        return refuse_unusable(data, UNSUPPORTED_FIELDS)

    @model_validator(mode="after")
    def _check_bookkeeping(self) -> SamplingFields:
        if self.store:
            raise InvalidRequest("store: this server keeps no responses; send store false or omit it", param="store")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("stream_options: only allowed when stream is true", param="stream_options")
        return self

    @model_validator(mode="after")
    def _check_greedy(self) -> SamplingFields:
        if self.n > 1 and self.temperature == 0:
            # vLLM refuses n > 1 for greedy decoding; OpenAI returns n copies of one answer. Say so instead.
            raise InvalidRequest(
                "n: must be 1 when temperature is 0 (greedy decoding gives the same answer n times)", param="n"
            )
        return self

    @model_validator(mode="after")
    def _check_stop(self) -> SamplingFields:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"stop: at most {MAX_STOP_SEQUENCES} sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop: sequences must not be empty")
        return self

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)
