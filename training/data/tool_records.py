"""Tool-calling chat records: the `tools` a record offers and the calls and results in its messages.

Records follow OpenAI's chat shape: `tools` is a list of function tools, an assistant message may carry
`tool_calls` (each with an `id`, `type: "function"` and `function.name` / `function.arguments`, the arguments
a JSON object written as a string) and a `tool` message answers one call by its `tool_call_id`. A record is
checked as OpenAI's API checks a request, and more: every call is to a tool of the record, with arguments that
are a JSON object holding the tool's required parameters, and every call is answered before the conversation
moves on. Errors name the record and the field, as `messages[2].tool_calls[0].function.arguments`.
"""

from __future__ import annotations

import json
import re

from training.data.templates import ToolCall
from training.errors import DataError

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names


def parse_tools(tools: object, location: str) -> tuple[dict, ...]:
    """OpenAI function tools: `{"type": "function", "function": {"name", "description"?, "parameters"?}}`."""
    if not isinstance(tools, list) or not tools:
        raise DataError.in_field(location, "tools", "must be a non-empty list of function tools")
    names = set()
    for index, tool in enumerate(tools):
        path = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise DataError.in_field(location, path, 'must be {"type": "function", "function": {...}}')
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise DataError.in_field(
                location, f"{path}.function.name", f"must be 1-64 letters, digits, '_' or '-', got {name!r}"
            )
        if name in names:
            raise DataError.in_field(location, f"{path}.function.name", f"{name!r} is defined twice")
        names.add(name)
        if not isinstance(function.get("description", ""), str):
            raise DataError.in_field(location, f"{path}.function.description", "must be a string")
        _check_parameters(function.get("parameters", {"type": "object"}), location, f"{path}.function.parameters")
    return tuple(tools)


def _check_parameters(parameters: object, location: str, path: str) -> None:
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise DataError.in_field(location, path, 'must be a JSON Schema object: {"type": "object", ...}')
    required = parameters.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        raise DataError.in_field(location, f"{path}.required", "must be a list of argument names")


class ToolCalls:
    """The calls of one record so far: each is to a tool of the record, with JSON object arguments, and is
    answered by a `tool` message (naming its id) before the conversation moves on, as OpenAI's API requires."""

    def __init__(self, location: str, tools: tuple[dict, ...] | None) -> None:
        self.location = location
        self.functions = {tool["function"]["name"]: tool["function"] for tool in tools or ()}
        self.ids: set[str] = set()
        self.pending: dict[str, str] = {}  # id -> path of the call, until a tool message answers it

    def parse(self, tool_calls: object, path: str) -> tuple[ToolCall, ...]:
        """An assistant message's `tool_calls`."""
        if not isinstance(tool_calls, list) or not tool_calls:
            raise DataError.in_field(self.location, path, "must be a non-empty list of calls")
        return tuple(self._parse_call(call, f"{path}[{index}]") for index, call in enumerate(tool_calls))

    def _parse_call(self, call: object, path: str) -> ToolCall:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise DataError.in_field(self.location, path, "must be an object with 'id', 'type' and 'function'")
        call_id, function = call.get("id"), call["function"]
        if not isinstance(call_id, str) or not call_id:
            raise DataError.in_field(self.location, f"{path}.id", "must be a non-empty string")
        if call_id in self.ids:
            raise DataError.in_field(self.location, f"{path}.id", f"{call_id!r} is the id of an earlier call")
        if call.get("type", "function") != "function":
            raise DataError.in_field(self.location, f"{path}.type", f"must be 'function', got {call.get('type')!r}")
        name = function.get("name")
        if name not in self.functions:
            known = f"its tools are {sorted(self.functions)}" if self.functions else "it has no 'tools'"
            raise DataError.in_field(
                self.location, f"{path}.function.name", f"{name!r} is not a tool of this record ({known})"
            )
        arguments = self._arguments(function.get("arguments"), f"{path}.function.arguments")
        required = self.functions[name].get("parameters", {}).get("required", [])
        missing = [key for key in required if key not in arguments]
        if missing:
            raise DataError.in_field(
                self.location, f"{path}.function.arguments", f"{name} requires {missing}, missing from {arguments}"
            )
        self.ids.add(call_id)
        self.pending[call_id] = path
        return ToolCall(id=call_id, name=name, arguments=function["arguments"])

    def _arguments(self, text: object, path: str) -> dict:
        if not isinstance(text, str):
            raise DataError.in_field(
                self.location, path, f"must be a string of JSON (OpenAI's form), got {type(text).__name__}"
            )
        try:
            arguments = json.loads(text)
        except json.JSONDecodeError as error:
            problem = f"not valid JSON: {error.msg} (column {error.colno})"
            raise DataError.in_field(self.location, path, problem) from error
        if not isinstance(arguments, dict):
            raise DataError.in_field(self.location, path, f"must be a JSON object, got {type(arguments).__name__}")
        return arguments

    def answer(self, call_id: object, path: str) -> str:
        """A `tool` message's `tool_call_id`: it must name an earlier call that has no result yet."""
        if not isinstance(call_id, str):
            raise DataError.in_field(self.location, path, "must be the id of the call this result answers")
        if call_id not in self.pending:
            said = "already has its result" if call_id in self.ids else "is the id of no earlier call"
            raise DataError.in_field(self.location, path, f"{call_id!r} {said}")
        del self.pending[call_id]
        return call_id

    def check_answered(self, path: str, role: object) -> None:
        """Every call has its result before the next message that is not a `tool` message."""
        if role != "tool" and self.pending:
            call_id, call_path = next(iter(self.pending.items()))
            raise DataError.in_field(self.location, call_path, f"call {call_id!r} has no 'tool' result before {path}")
