"""Request schemas of the OpenAI API (plus the vLLM extensions its benchmark and users send).

Requests are validated here, once, with pydantic; `sampling.py` turns a valid request into `GenerationParams`,
our engine-neutral sampling settings, so nothing past those two modules looks at request fields. Responses are plain
dicts built in `output.py`: on the hot path a dict is cheaper than a model and the shape is
fixed by OpenAI, not by us.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.errors import InvalidRequest

MAX_N = 16
MAX_STOP_SEQUENCES = 16
INT64 = (-(2**63), 2**63 - 1)  # seeds travel to the engine process as 64-bit integers
INT32_MAX = 2**31 - 1


def _unencodable_field(value: Any, path: str) -> str | None:
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
            found = _unencodable_field(key, path) or _unencodable_field(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unencodable_field(item, f"{path}[{index}]")
            if found:
                return found
    return None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is 'json_schema'")
        return self


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

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

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data: Any) -> Any:
        field = _unencodable_field(data, "")
        if field:
            raise InvalidRequest(
                f"{field}: contains a character that cannot be encoded (a lone surrogate)", param=field
            )
        return data

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


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise InvalidRequest("prompt: must not be empty", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]
