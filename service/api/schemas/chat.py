"""Request schemas of the OpenAI API (plus the vLLM extensions its benchmark and users send).

Requests are validated here, once, with pydantic; `sampling.py` turns a valid request into `GenerationParams`,
our engine-neutral sampling settings, so nothing past those two modules looks at request fields. Responses are plain
dicts built in `output.py`: on the hot path a dict is cheaper than a model and the shape is
fixed by OpenAI, not by us.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _json_schema_object(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        return json_schema_object(schema)


def json_schema_object(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI takes a JSON-schema *object* for a function's parameters (arguments are an object); anything
    else is refused here, not by the structured-output backend later."""
    if schema is None:
        return None
    if schema.get("type", "object") != "object":
        raise ValueError(f"must be a JSON schema of type 'object', got type {schema.get('type')!r}")
    error = _schema_error(json.dumps(schema, sort_keys=True))
    if error is not None:
        raise ValueError(f"is not a valid JSON schema: {error}")
    return schema


@functools.lru_cache(maxsize=256)
def _schema_error(canonical: str) -> str | None:
    schema = json.loads(canonical)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        return exc.message
    return None


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class ChosenFunction(BaseModel):
    name: FunctionName


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: ChosenFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(BaseModel):
    name: FunctionName
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, arguments: str) -> str:
        return json_object_string(arguments)


def json_object_string(arguments: str) -> str:
    """A call in the history is re-rendered into the prompt, which needs its arguments as a JSON object."""
    try:
        decoded = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        raise ValueError("must be a JSON object encoded as a string") from None
    if not isinstance(decoded, dict):
        raise ValueError("must be a JSON object encoded as a string")
    return arguments


class MessageToolCall(BaseModel):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def openai_shape(self) -> dict[str, Any]:
        """The message as OpenAI sends it (content as text), what `tool_prompt` and chat templates read."""
        shaped: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            shaped["content"] = self.text() or None
            shaped["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            shaped["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            shaped["name"] = self.name
        return shaped


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


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @model_validator(mode="after")
    def _check_tools(self) -> ChatCompletionRequest:
        check_tools(self.tools, self.tool_choice)
        if self.logprobs and self.tools and self.tool_choice_mode() != "none":
            raise InvalidRequest("logprobs: not supported together with tools", param="logprobs")
        check_tool_history(self.messages)
        return self

    def tool_choice_mode(self) -> Literal["none", "auto", "required", "named"]:
        """OpenAI's default: `auto` when tools are given, `none` otherwise."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or "auto"


def check_tools(tools: list[FunctionTool] | None, tool_choice: ToolChoice | None) -> None:
    """OpenAI's rules for `tools` and `tool_choice`, as 400s naming the field."""
    if tools is not None and not tools:
        raise InvalidRequest("tools: must not be empty (omit it to send no tools)", param="tools")
    if not tools:
        if tool_choice not in (None, "none"):
            raise InvalidRequest("tool_choice: only allowed when tools are given", param="tool_choice")
        return
    names = [tool.function.name for tool in tools]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidRequest(f"tools: function names must be unique, repeated: {duplicates}", param="tools")
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in names:
        raise InvalidRequest(
            f"tool_choice: the function '{tool_choice.function.name}' is not in tools", param="tool_choice"
        )


def check_tool_history(messages: list[ChatMessage]) -> None:
    """Calls only on assistant turns; every tool result answers a call made earlier in the conversation."""
    called: set[str] = set()
    for index, message in enumerate(messages):
        if message.tool_calls and message.role != "assistant":
            raise InvalidRequest(
                f"messages[{index}].tool_calls: only assistant messages make calls", param=f"messages[{index}]"
            )
        if message.role == "assistant":
            called.update(call.id for call in message.tool_calls or ())
        elif message.role == "tool":
            param = f"messages[{index}].tool_call_id"
            if not message.tool_call_id:
                raise InvalidRequest(f"{param}: required for a tool message", param=param)
            if message.tool_call_id not in called:
                raise InvalidRequest(
                    f"{param}: '{message.tool_call_id}' does not answer any earlier assistant tool call", param=param
                )
        elif message.tool_call_id is not None:
            raise InvalidRequest(
                f"messages[{index}].tool_call_id: only tool messages answer calls", param=f"messages[{index}]"
            )


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
