"""The chat completions request (OpenAI's, plus the vLLM extensions its benchmark and users send): messages,
tools and tool choice, response format, and the checks that tie them together (a tool result answers an
earlier call, a named tool is one of `tools`)."""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.api.schemas.sampling import SamplingFields
from service.errors import InvalidRequest


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


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # vllm-router's chat fields (see SamplingFields): the prompt ends with a new assistant turn; with no
    # reasoning parser there is no reasoning to separate, stream or include, so true changes nothing.
    continue_final_message: Literal[False] = False
    separate_reasoning: Literal[True] = True
    stream_reasoning: Literal[True] = True
    include_reasoning: Literal[True] = True

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
