"""`tool_choice: "auto"`: a vLLM tool parser reads the calls a model wrote in its own format.

vLLM's parsers (`vllm/tool_parsers/`, one per model family: hermes, llama3_json, pythonic, mistral, ...) are
vLLM's API, so, like `client.py`, this folder alone imports them. `ToolParsing` is built once at start-up from
`--tool-call-parser`; `ToolParsing.reader()` gives each choice an `AutoCallsReader`, which implements
`tool_calls.ToolCallReader` on top of the parser and enforces what the parsers leave to chance (reported in
vLLM's tracker: #58228, #28806): ids and names on each call's first delta, arguments that are a JSON object
(`"{}"` when empty, never dropped), at most one call when `parallel_tool_calls` is false, `length` over
`tool_calls`. Streamed output is checked against a full parse of the finished text, and whatever the
incremental parser missed is sent before the finish reason.

A model whose chat template has no tool format of its own is prompted in the default format
(`tsumugi/tool_prompt.py`), which vLLM's `hermes` parser reads; it is the default parser for such models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VLLMChatRequest
from vllm.tool_parsers import ToolParserManager
from vllm.tool_parsers.abstract_tool_parser import ToolParser

from service.errors import StartupError
from service.pipeline.tools import CallDelta, Piece, ReadMessage, ToolCall, new_call_id, normalized_arguments

logger = logging.getLogger(__name__)


def parser_names() -> list[str]:
    return ToolParserManager.list_registered()


class ToolParsing:
    """The server's tool-call parser (`--tool-call-parser`), for every request with `tool_choice: "auto"`."""

    def __init__(self, name: str, tokenizer: PreTrainedTokenizerBase) -> None:
        try:
            self._parser_class = ToolParserManager.get_tool_parser(name)
        except KeyError:
            raise StartupError(
                f"--tool-call-parser {name}: unknown; choose one of {', '.join(parser_names())}"
            ) from None
        self.name = name
        self._tokenizer = tokenizer

    def reader(self, functions: Sequence[dict[str, Any]], parallel: bool) -> AutoCallsReader:
        tools = [{"type": "function", "function": dict(f)} for f in functions]
        request = VLLMChatRequest.model_validate(
            {"messages": [], "tools": tools, "tool_choice": "auto", "parallel_tool_calls": parallel}
        )
        parser = self._parser_class(self._tokenizer, request.tools)
        request = parser.adjust_request(request)
        return AutoCallsReader(parser, request, {f["name"] for f in functions}, parallel)


class AutoCallsReader:
    """One choice's output read by a vLLM parser (see the module docstring)."""

    def __init__(self, parser: ToolParser, request: VLLMChatRequest, names: set[str], parallel: bool) -> None:
        self._parser = parser
        self.request = request
        self._names = names
        self._parallel = parallel
        self._text = ""
        self._token_ids: list[int] = []
        self._streamed: dict[int, list[str]] = {}  # per call index: [id, name, arguments sent so far]
        self.num_parse_failures = 0
        self.keeps_special_tokens = not request.skip_special_tokens

    def feed(self, text: str, token_ids: Sequence[int]) -> Piece:
        previous_text, previous_ids = self._text, self._token_ids
        self._text = previous_text + text
        self._token_ids = [*previous_ids, *token_ids]
        try:
            delta = self._parser.extract_tool_calls_streaming(
                previous_text, self._text, text, previous_ids, self._token_ids, list(token_ids), self.request
            )
        except Exception:
            logger.exception("tool parser %s failed on a streamed delta", type(self._parser).__name__)
            return Piece()
        if delta is None:
            return Piece()
        return Piece(delta.content or "", self._call_deltas(delta.tool_calls))

    def finish(self, finish_reason: str | None) -> tuple[list[CallDelta], str | None]:
        message = self.read(self._text, finish_reason, reuse_ids=True)
        deltas: list[CallDelta] = []
        for index, call in enumerate(message.calls):
            sent = self._streamed.get(index)
            if sent is None:
                deltas += [CallDelta(index, "", call.id, call.name), CallDelta(index, call.arguments)]
            elif call.arguments.startswith(sent[2]) and len(call.arguments) > len(sent[2]):
                deltas.append(CallDelta(index, call.arguments[len(sent[2]) :]))
            elif not call.arguments.startswith(sent[2]):
                self.num_parse_failures += 1
                logger.warning("tool parser streamed arguments that differ from its full parse (call %d)", index)
        return deltas, message.finish_reason

    def read(self, text: str, finish_reason: str | None, reuse_ids: bool = False) -> ReadMessage:
        try:
            extracted = self._parser.extract_tool_calls(text, self.request)
        except Exception:
            logger.exception("tool parser %s failed on a finished output", type(self._parser).__name__)
            self.num_parse_failures += 1
            return ReadMessage(text, [], finish_reason)
        calls = []
        for index, found in enumerate(extracted.tool_calls if extracted.tools_called else []):
            arguments = normalized_arguments(found.function.arguments)
            if arguments is None or found.function.name not in self._names:
                self.num_parse_failures += 1
                return ReadMessage(text, [], finish_reason)
            sent = self._streamed.get(index) if reuse_ids else None
            calls.append(ToolCall(sent[0] if sent else new_call_id(), found.function.name, arguments))
        if not calls:
            start = getattr(self._parser, "tool_call_start_token", None)
            if isinstance(start, str) and start in text:
                self.num_parse_failures += 1  # the model began a call the parser could not read
            return ReadMessage(text, [], finish_reason)
        if finish_reason == "length":
            return ReadMessage(text, [], finish_reason)  # the output was cut: no half-written call
        content = extracted.content if extracted.content and extracted.content.strip() else None
        return ReadMessage(content, calls if self._parallel else calls[:1], "tool_calls")

    def _call_deltas(self, tool_calls: Sequence[Any]) -> list[CallDelta]:
        deltas = []
        for tool_call in tool_calls:
            index = tool_call.index
            if index > 0 and not self._parallel:
                continue
            function = tool_call.function
            if function is not None and not isinstance(function, dict):
                function = function.model_dump()
            name = (function or {}).get("name")
            arguments = (function or {}).get("arguments") or ""
            sent = self._streamed.get(index)
            if sent is None:
                if not name:
                    continue  # a fragment before the name: the full parse at the end sends it
                sent = self._streamed[index] = [tool_call.id or new_call_id(), name, ""]
                deltas.append(CallDelta(index, "", sent[0], name))
            if arguments:
                sent[2] += arguments
                deltas.append(CallDelta(index, arguments))
        return deltas
