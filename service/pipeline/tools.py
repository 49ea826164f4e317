"""Reading tool calls out of a choice's output: what the model wrote → OpenAI's `tool_calls`, streamed or not.

A request's `tool_choice` decides how its output is read (`ToolCallPolicy`):

* `none`: not at all (plain text).
* a named function: the output was constrained (structured outputs) to that function's parameters, so the whole
  text *is* the arguments of one call. It streams as it comes: one opening delta with the id and name, then the
  text as argument fragments. `finish_reason` stays `stop`, as OpenAI's does for a named choice.
* `required`: the output was constrained to a JSON array of `{"name", "parameters"}` objects (one or more calls
  of the given tools, at most one when `parallel_tool_calls` is false). It is read when the choice ends;
  `finish_reason` becomes `tool_calls`.
* `auto`: the model wrote calls in its own format, which a vLLM tool parser reads (`engine/tool_parsers.py`, behind
  the engine boundary), text before the calls staying content.

Whatever the mode, the rules OpenAI's clients depend on are applied here once: every call has a unique
`call_...` id, a name and arguments that are a JSON object encoded as a string (`"{}"` when empty, never
dropped); a stream opens each call with `{index, id, type, function: {name, arguments: ""}}` before its
fragments; `finish_reason: "length"` wins over `tool_calls` whenever the output was cut, and a call cut off
is then not reported as a call (its text stays in `content`, so nothing is lost).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from service.api.schemas.chat import ChatCompletionRequest
from service.errors import InvalidRequest
from tsumugi import tool_prompt

ToolChoiceMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, encoded

    def openai_shape(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class CallDelta:
    """A streamed piece of call `index`: its opening (id and name, no arguments yet) or an argument fragment."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def openai_shape(self) -> dict[str, Any]:
        if self.id is not None:
            function = {"name": self.name, "arguments": self.arguments}
            return {"index": self.index, "id": self.id, "type": "function", "function": function}
        return {"index": self.index, "function": {"arguments": self.arguments}}


@dataclass(slots=True)
class Piece:
    """What one choice emits at one engine step: content text and call deltas, in that order."""

    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReadMessage:
    """A finished choice, read: its content (None when only calls), its calls and its finish reason."""

    content: str | None
    calls: list[ToolCall]
    finish_reason: str | None


class ToolCallReader(Protocol):
    """Reads one choice's output; a new reader per choice (stream readers keep state)."""

    keeps_special_tokens: bool  # whether the format's markers are special tokens the text must keep
    num_parse_failures: int  # calls the model began that could not be read (their text stays content)

    def feed(self, text: str, token_ids: Sequence[int]) -> Piece:
        """Streamed: what to emit for the text (and token ids) that just arrived."""
        ...

    def finish(self, finish_reason: str | None) -> tuple[list[CallDelta], str | None]:
        """Streamed: the last call deltas to emit once the choice ended, and its finish reason."""
        ...

    def read(self, text: str, finish_reason: str | None) -> ReadMessage:
        """Not streamed: the whole choice at once."""
        ...


class CallParsing(Protocol):
    """The server's parser for `tool_choice: "auto"` (`tool_parsing.ToolParsing`, vLLM's parsers)."""

    name: str

    def reader(self, functions: Sequence[dict[str, Any]], parallel: bool) -> ToolCallReader: ...


AUTO_NEEDS_PARSER = (
    'tool_choice: "auto" needs a tool format this server can read: start it with --enable-auto-tool-choice '
    "(and --tool-call-parser NAME for a model whose chat template has its own tool format), or send "
    'tool_choice "required" or a named function, which work with any model'
)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def normalized_arguments(arguments: str | dict | None) -> str | None:
    """Arguments as a JSON object encoded as a string (`"{}"` when empty), or None when they are not one."""
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    if arguments is None or not arguments.strip():
        return "{}"
    try:
        decoded = json.loads(arguments)
    except ValueError:
        return None
    if not isinstance(decoded, dict):
        return None
    return arguments.strip() if decoded else "{}"


def empty_object_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolCallPolicy:
    """How one request's output is constrained and read, from its `tools`, `tool_choice` and
    `parallel_tool_calls`."""

    mode: ToolChoiceMode
    functions: tuple[dict[str, Any], ...] = ()  # name, description, parameters of each tool
    named: str | None = None
    parallel: bool = True
    json_answer: bool = False  # a JSON response_format was asked for too
    parsing: CallParsing | None = None  # the server's parser for `auto` (None: auto is refused)

    @classmethod
    def of(cls, body: ChatCompletionRequest, parsing: CallParsing | None) -> ToolCallPolicy:
        mode = body.tool_choice_mode()
        if mode == "none":
            return cls("none")
        functions = tuple(tool.function.model_dump(exclude_none=True) for tool in body.tools or ())
        named = body.tool_choice.function.name if mode == "named" else None  # type: ignore[union-attr]
        json_answer = body.response_format is not None and body.response_format.type != "text"
        return cls(mode, functions, named, body.parallel_tool_calls is not False, json_answer, parsing)

    def rendered_tools(self) -> list[dict[str, Any]] | None:
        """The tools to show the model in its prompt: none when it must not call any."""
        if self.mode == "none":
            return None
        return [{"type": "function", "function": function} for function in self.functions]

    def constraint(self) -> dict[str, Any] | None:
        """The JSON schema the output must follow for a forced choice (None for `auto` and `none`). A forced
        choice wins over `response_format` (the output is the call; the Agents SDK sends both, as vLLM allows)."""
        if self.mode == "named":
            return self._parameters(self.named) or empty_object_schema()
        if self.mode != "required":
            return None
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": self._calls("parameters")}}
        if not self.parallel:
            schema["maxItems"] = 1
        return schema

    def readers(self, num_choices: int) -> list[ToolCallReader] | None:
        """One reader per choice (None when the output is plain text); 400 for `auto` on a server that
        cannot read calls, as vLLM's server answers."""
        if self.mode == "none":
            return None
        if self.mode == "named":
            return [NamedCallReader(self.named or "") for _ in range(num_choices)]
        if self.mode == "required":
            return [RequiredCallsReader(self.parallel) for _ in range(num_choices)]
        if self.parsing is None:
            raise InvalidRequest(AUTO_NEEDS_PARSER, param="tool_choice")
        return [self.parsing.reader(self.functions, self.parallel) for _ in range(num_choices)]

    def call_alternative(self) -> dict[str, Any] | None:
        """With `auto` and a JSON `response_format`, the schema of one call in the default format's
        `<tool_call>` blocks: the output is then constrained to the answer's JSON *or* calls (otherwise the format
        would leave the model no way to call, vLLM #39929). Only the hermes format is known well enough to
        allow it; with another parser the combination is refused rather than one of the two dropped."""
        if self.mode != "auto" or not self.json_answer:
            return None
        if self.parsing is None or self.parsing.name != tool_prompt.DEFAULT_TOOL_PARSER:
            raise InvalidRequest(
                f'response_format: with tool_choice "auto" it needs the {tool_prompt.DEFAULT_TOOL_PARSER} tool '
                'format; send tool_choice "none" or a forced choice, or serve with that parser',
                param="response_format",
            )
        return {"anyOf": self._calls("arguments")}

    def _calls(self, arguments_key: str) -> list[dict[str, Any]]:
        return [
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [f["name"]]},
                    arguments_key: f.get("parameters") or empty_object_schema(),
                },
                "required": ["name", arguments_key],
            }
            for f in self.functions
        ]

    def _parameters(self, name: str | None) -> dict[str, Any] | None:
        return next((f.get("parameters") for f in self.functions if f["name"] == name), None)


class NamedCallReader:
    """`tool_choice` naming a function: the constrained output is that call's arguments."""

    keeps_special_tokens = False
    num_parse_failures = 0  # the grammar made the text the call: there is nothing it could fail to read

    def __init__(self, name: str) -> None:
        self._name = name
        self._id = new_call_id()
        self._parts: list[str] = []

    def feed(self, text: str, token_ids: Sequence[int]) -> Piece:
        calls = [] if self._parts else [CallDelta(0, "", self._id, self._name)]
        self._parts.append(text)
        if text:
            calls.append(CallDelta(0, text))
        return Piece(calls=calls)

    def finish(self, finish_reason: str | None) -> tuple[list[CallDelta], str | None]:
        text = "".join(self._parts)
        calls = [] if self._parts else [CallDelta(0, "", self._id, self._name)]
        if not text.strip() and finish_reason != "length":
            calls.append(CallDelta(0, "{}"))  # a call without arguments still says so (vLLM #28806)
        return calls, finish_reason

    def read(self, text: str, finish_reason: str | None) -> ReadMessage:
        arguments = normalized_arguments(text)
        if finish_reason == "length" or arguments is None:
            return ReadMessage(text, [], finish_reason)
        return ReadMessage(None, [ToolCall(self._id, self._name, arguments)], finish_reason)


class RequiredCallsReader:
    """`tool_choice: "required"`: a constrained JSON array of calls, read when the choice ends."""

    keeps_special_tokens = False
    num_parse_failures = 0  # the grammar made the text the call: there is nothing it could fail to read

    def __init__(self, parallel: bool) -> None:
        self._parallel = parallel
        self._parts: list[str] = []

    def feed(self, text: str, token_ids: Sequence[int]) -> Piece:
        self._parts.append(text)
        return Piece()

    def finish(self, finish_reason: str | None) -> tuple[list[CallDelta], str | None]:
        message = self.read("".join(self._parts), finish_reason)
        deltas = []
        for index, call in enumerate(message.calls):
            deltas += [CallDelta(index, "", call.id, call.name), CallDelta(index, call.arguments)]
        return deltas, message.finish_reason

    def read(self, text: str, finish_reason: str | None) -> ReadMessage:
        calls = None if finish_reason == "length" else _array_calls(text)
        if not calls:
            return ReadMessage(text, [], finish_reason)
        return ReadMessage(None, calls if self._parallel else calls[:1], "tool_calls")


def _array_calls(text: str) -> list[ToolCall] | None:
    try:
        items = json.loads(text)
    except ValueError:
        return None
    if not isinstance(items, list):
        return None
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = normalized_arguments(item.get("parameters"))
        if arguments is None:
            return None
        calls.append(ToolCall(new_call_id(), item["name"], arguments))
    return calls
