"""Request schema of OpenAI's Responses API (`POST /v1/responses`), stateless, and its mapping onto chat.

A Responses request is a chat request in other clothes: `instructions` is a system turn, `input` items are
messages, the model's earlier `function_call`s and their `function_call_output`s are an assistant turn's
`tool_calls` and `tool` turns, `max_output_tokens` is `max_tokens`, `text.format` is `response_format`, and
function tools are flat (`{"type": "function", "name", "parameters"}`). `chat_request()` maps it onto
`ChatCompletionRequest`, so rendering, validation, sampling and tool-call reading are chat's, written once.

Nothing is stored: `store` is accepted and reported as false; `previous_response_id` and `conversation` (which
need state kept between requests) are refused with a 400 saying to send the whole input.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from service.api.schemas.chat import ChatCompletionRequest, FunctionDefinition, FunctionName, json_object_string
from service.api.schemas.sampling import INT32_MAX, refuse_unusable
from service.errors import InvalidRequest

STATELESS = "this server keeps no state between requests; send the whole conversation in input"
UNSUPPORTED_FIELDS = {
    "previous_response_id": STATELESS,
    "conversation": STATELESS,
    "background": "background responses are not supported (they need stored state)",
    "prompt": "stored prompt templates are not supported",
    "max_tool_calls": "max_tool_calls is not supported",
    "top_logprobs": "logprobs are not supported on this endpoint; use /v1/chat/completions",
}


class InputText(BaseModel):
    type: Literal["input_text", "output_text", "text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(BaseModel):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class FunctionCallItem(BaseModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: FunctionName
    arguments: str
    id: str | None = None
    status: str | None = None

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, arguments: str) -> str:
        return json_object_string(arguments)


class FunctionCallOutputItem(BaseModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(part.text for part in self.output)


def _item_type(item: Any) -> str:
    """The union tag of an input item (tags are spelled `item:...` so error paths can leave them out)."""
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "message")
    return f"item:{kind}" if kind in ("message", "function_call", "function_call_output") else "item:unsupported"


class UnsupportedItem(BaseModel):
    type: str

    @model_validator(mode="after")
    def _refuse(self) -> UnsupportedItem:
        raise ValueError(
            f"items of type {self.type!r} are not supported (message, function_call, function_call_output)"
        )


InputItem = Annotated[
    Annotated[MessageItem, Tag("item:message")]
    | Annotated[FunctionCallItem, Tag("item:function_call")]
    | Annotated[FunctionCallOutputItem, Tag("item:function_call_output")]
    | Annotated[UnsupportedItem, Tag("item:unsupported")],
    Discriminator(_item_type),
]


class ResponsesFunctionTool(FunctionDefinition):
    """A function tool, flat: chat's function definition with the `type` beside its fields."""

    type: Literal["function"]


class NamedFunction(BaseModel):
    type: Literal["function"]
    name: FunctionName


class TextFormat(BaseModel):
    type: Literal["text", "json_schema", "json_object"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(BaseModel):
    format: TextFormat = Field(default_factory=TextFormat)
    verbosity: Literal["medium"] | None = None  # the only verbosity a model that knows none can honour


class ResponsesRequest(BaseModel):
    """`POST /v1/responses`: unknown fields are refused by name, as on chat."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[ResponsesFunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    text: TextConfig | None = None
    stream: bool = False
    store: bool | None = None  # accepted; nothing is stored, and the response says store: false
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    reasoning: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        return refuse_unusable(data, UNSUPPORTED_FIELDS)

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        if self.include:
            raise InvalidRequest(f"include: {self.include} cannot be provided by this server", param="include")
        if self.reasoning and any(value is not None for value in self.reasoning.values()):
            raise InvalidRequest("reasoning: this model does not reason", param="reasoning")
        if isinstance(self.input, list) and not self.input:
            raise InvalidRequest("input: must not be empty", param="input")
        if isinstance(self.input, list):
            called: set[str] = set()
            for index, item in enumerate(self.input):
                if isinstance(item, FunctionCallItem):
                    called.add(item.call_id)
                elif isinstance(item, FunctionCallOutputItem) and item.call_id not in called:
                    raise InvalidRequest(
                        f"input[{index}].call_id: '{item.call_id}' does not answer an earlier function_call",
                        param=f"input[{index}].call_id",
                    )
        return self

    def chat_request(self) -> ChatCompletionRequest:
        """The same request as a chat completion (see the module docstring)."""
        chat: dict[str, Any] = {
            "model": self.model,
            "messages": self._messages(),
            "stream": self.stream,
            "max_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "parallel_tool_calls": self.parallel_tool_calls,
        }
        if self.stream:
            chat["stream_options"] = {"include_usage": True}
        if self.tools is not None:
            chat["tools"] = [
                {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
                for tool in self.tools
            ]
        if isinstance(self.tool_choice, NamedFunction):
            chat["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            chat["tool_choice"] = self.tool_choice
        text_format = self.text.format if self.text else None
        if text_format is not None and text_format.type == "json_schema":
            schema = {"name": text_format.name or "response", "schema": text_format.schema_ or {}}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif text_format is not None and text_format.type == "json_object":
            chat["response_format"] = {"type": "json_object"}
        try:
            return ChatCompletionRequest.model_validate(chat)
        except ValidationError as exc:  # what only the chat form checks (a tool's schema, say): still a 400
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise InvalidRequest(
                f"{where}: {error['msg']}", param="tools" if where.startswith("tools") else "input"
            ) from None

    def _messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            return [*messages, {"role": "user", "content": self.input}]
        for item in self.input:
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": item.text()})
            elif isinstance(item, FunctionCallItem):
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant":
                    last.setdefault("tool_calls", []).append(call)  # a turn's text and its calls are one turn
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
        return messages
