"""Engine steps → a Responses API answer: one `response` object, or its stream of typed events.

The generation is chat's (`pipeline/start.py` runs the request mapped onto chat); only the shape differs. Output is
a list of items: a `message` item holding the text (when there is any), then one `function_call` item per call,
read by the same `ToolCallReader` as chat's `tool_calls`. A stream is OpenAI's event sequence:

    response.created, response.in_progress,
    per item: response.output_item.added,
      text:  response.content_part.added, response.output_text.delta..., response.output_text.done,
             response.content_part.done
      call:  response.function_call_arguments.delta..., response.function_call_arguments.done
    response.output_item.done, ..., then response.completed (or response.incomplete when cut by
    max_output_tokens), with usage.

An error after the stream has started is an `error` event, and the stream ends.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.render.chat import collect
from service.api.render.stream_errors import dumps as _dumps
from service.api.render.stream_errors import mid_stream_error
from service.api.schemas.responses import ResponsesRequest
from service.errors import APIError, request_id_of
from service.pipeline.generation import Generation, GenerationResult
from service.pipeline.start import ChatRun
from service.pipeline.tools import CallDelta, Piece, ToolCall


@dataclass
class ResponseFrame:
    """What every state of one response object shares (id, model, the request's settings)."""

    body: ResponsesRequest
    id: str = field(default_factory=lambda: "resp_" + uuid.uuid4().hex)
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(
        self, status: str, output: list[dict[str, Any]], result: GenerationResult | None, cut: bool = False
    ) -> dict[str, Any]:
        body = self.body
        tool_choice: Any = body.tool_choice or ("auto" if body.tools else "none")
        if not isinstance(tool_choice, str):
            tool_choice = tool_choice.model_dump()
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": body.model,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": None,
            "store": False,
            "temperature": body.temperature,
            "text": {
                "format": (
                    body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text else {"type": "text"}
                )
            },
            "tool_choice": tool_choice,
            "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or ()],
            "top_p": body.top_p,
            "truncation": "disabled",
            "usage": usage(result) if result is not None else None,
            "metadata": body.metadata or {},
            "user": body.user,
        }


def usage(result: GenerationResult) -> dict[str, Any]:
    return {
        "input_tokens": result.num_prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": result.num_completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": result.num_prompt_tokens + result.num_completion_tokens,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = (
        [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else []
    )
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


async def respond(request: Request, run: ChatRun, body: ResponsesRequest) -> JSONResponse | StreamingResponse:
    """The response for a started generation: streamed as events, or collected into one object."""
    frame, generation = ResponseFrame(body), run.generation
    if body.stream:
        events = ResponseEvents(frame, run)
        return StreamingResponse(
            events.stream(generation, request_id_of(request.scope)), media_type="text/event-stream"
        )
    (choice,) = await collect(request, generation)
    content, calls, finish_reason = choice.text, [], choice.finish_reason
    if run.readers is not None:
        read = run.readers[0].read(choice.text, finish_reason)
        content, calls, finish_reason = read.content, read.calls, read.finish_reason
        run.choice_read(0, bool(calls))
    output = [message_item(new_item_id("msg"), content)] if content else []
    output += [call_item(new_item_id("fc"), call) for call in calls]
    cut = finish_reason == "length"
    return JSONResponse(frame.response("incomplete" if cut else "completed", output, generation.result(), cut))


class ResponseEvents:
    """The event stream of one response: items opened as their first text or call arrives, closed in order."""

    def __init__(self, frame: ResponseFrame, run: ChatRun) -> None:
        self._frame = frame
        self._run = run
        self._reader = run.readers[0] if run.readers is not None else None
        self._sequence = 0
        self._output: list[dict[str, Any]] = []  # finished items
        self._message: dict[str, Any] | None = None  # the open message item
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}  # open call items by call index

    async def stream(self, generation: Generation, request_id: str) -> AsyncIterator[bytes]:
        yield self._event("response.created", response=self._frame.response("in_progress", [], None))
        yield self._event("response.in_progress", response=self._frame.response("in_progress", [], None))
        try:
            finish_reason = None
            async for _, step in generation.steps():
                for delta in step.deltas:
                    piece = (
                        Piece(delta.text) if self._reader is None else self._reader.feed(delta.text, delta.token_ids)
                    )
                    for event in self._piece(piece):
                        yield event
                    if delta.finish_reason is not None:
                        finish_reason = delta.finish_reason
                        if self._reader is not None:
                            last_calls, finish_reason = self._reader.finish(finish_reason)
                            for event in self._piece(Piece(calls=last_calls)):
                                yield event
                            self._run.choice_read(0, bool(self._calls))
            interruption = generation.interruption()
            if interruption is not None:
                yield self._error(interruption)
                return
            for event in self._close_all():
                yield event
            cut = finish_reason == "length"
            final = self._frame.response("incomplete" if cut else "completed", self._output, generation.result(), cut)
            yield self._event("response.incomplete" if cut else "response.completed", response=final)
        except Exception as exc:
            yield self._error(mid_stream_error(exc, request_id))

    def _piece(self, piece: Piece) -> list[bytes]:
        events = []
        if piece.content:
            if self._message is None:
                self._message = message_item(new_item_id("msg"), "", "in_progress")
                events.append(
                    self._event("response.output_item.added", output_index=len(self._output), item=self._message)
                )
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                events.append(self._event("response.content_part.added", **self._at_message(), part=part))
            self._text.append(piece.content)
            events.append(
                self._event("response.output_text.delta", **self._at_message(), delta=piece.content, logprobs=[])
            )
        for call in piece.calls:
            events += self._call_delta(call)
        return events

    def _call_delta(self, call: CallDelta) -> list[bytes]:
        events = []
        if call.id is not None:
            events += self._close_message()
            item = call_item(new_item_id("fc"), ToolCall(call.id, call.name or "", ""), "in_progress")
            item["output_index"] = len(self._output) + len(self._calls)
            self._calls[call.index] = item
            events.append(
                self._event("response.output_item.added", output_index=item["output_index"], item=_public(item))
            )
        item = self._calls.get(call.index)
        if item is not None and call.arguments:
            item["arguments"] += call.arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=item["output_index"],
                    delta=call.arguments,
                )
            )
        return events

    def _close_message(self) -> list[bytes]:
        if self._message is None:
            return []
        text = "".join(self._text)
        position = self._at_message()
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        done = message_item(self._message["id"], text)
        events = [
            self._event("response.output_text.done", **position, text=text, logprobs=[]),
            self._event("response.content_part.done", **position, part=part),
            self._event("response.output_item.done", output_index=len(self._output), item=done),
        ]
        self._output.append(done)
        self._message = None
        return events

    def _close_all(self) -> list[bytes]:
        events = self._close_message()
        for index in sorted(self._calls):
            item = self._calls[index]
            arguments = item["arguments"] or "{}"
            done = {**_public(item), "arguments": arguments, "status": "completed"}
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=item["output_index"],
                    name=item["name"],
                    arguments=arguments,
                )
            )
            events.append(self._event("response.output_item.done", output_index=item["output_index"], item=done))
            self._output.append(done)
        self._calls = {}
        return events

    def _at_message(self) -> dict[str, Any]:
        return {
            "item_id": self._message["id"] if self._message else "",
            "output_index": len(self._output),
            "content_index": 0,
        }

    def _error(self, error: APIError) -> bytes:
        detail = error.envelope()["error"]
        return self._event(
            "error", code=detail["code"] or detail["type"], message=detail["message"], param=detail["param"]
        )

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {_dumps(payload)}\n\n".encode()


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key != "output_index"}
