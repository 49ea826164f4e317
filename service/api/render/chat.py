"""Engine steps → the HTTP response: an SSE stream or one JSON body, for chat and text completions alike.

`respond()` is the last step of the request path. What differs between the endpoints is only the shape of a
choice, so each endpoint brings a small shape object (`ChatShape`, `CompletionShape`); streaming, collecting,
usage, errors and the end of a stream are written once here.

Streams are built as bytes: each chunk's constant part (id, object, created, model) is encoded once per
request and, per token, only the new text is JSON-encoded; no per-chunk response objects. An error after
the stream has started ends it with a final `error` event in OpenAI's envelope, then `[DONE]`, so a client
always sees a well-formed end. A bug of ours is logged with its traceback and reported as a 500-class error
naming the request id, never as the client's fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.render.stream_errors import dumps as _dumps
from service.api.render.stream_errors import mid_stream_error
from service.engine.types import ChoiceDelta, TokenLogprob
from service.errors import APIError, ClientClosed, request_id_of
from service.pipeline.generation import Generation, GenerationResult
from service.pipeline.start import ChatRun
from service.pipeline.tools import ToolCallReader

DONE = b"data: [DONE]\n\n"
_encode_text = json.encoder.encode_basestring  # the C encoder for one JSON string, quotes included


@dataclass(slots=True)
class CollectedChoice:
    """One choice of a non-streamed response, accumulated from its deltas."""

    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ChoiceShape(Protocol):
    """How one endpoint writes its choices."""

    object_name: str  # of a JSON body
    chunk_object_name: str  # of a stream chunk
    id_prefix: str  # of the response id

    def opening(self) -> list[str]:
        """Choices of a stream's first chunk, before any token (chat's role, completions' echo)."""
        ...

    def stream_choices(self, prompt_index: int, delta: ChoiceDelta) -> list[str]:
        """One delta as encoded JSON choices, one per stream chunk (usually one; none while a reader waits)."""
        ...

    def final_choice(self, index: int, choice: CollectedChoice) -> dict:
        """One collected choice of a JSON body."""
        ...


async def respond(
    request: Request,
    generation: Generation,
    shape: ChoiceShape,
    model: str,
    stream: bool,
    include_usage: bool = False,
) -> JSONResponse | StreamingResponse:
    """The response for a started generation: streamed as SSE, or collected into one JSON body."""
    response_id, created = f"{shape.id_prefix}{uuid.uuid4().hex}", int(time.time())
    if stream:
        encoder = ChunkEncoder(shape.chunk_object_name, response_id, created, model, include_usage)
        body = sse_events(generation, shape, encoder, request_id_of(request.scope))
        return StreamingResponse(body, media_type="text/event-stream")
    choices = await collect(request, generation)
    return JSONResponse(
        {
            "id": response_id,
            "object": shape.object_name,
            "created": created,
            "model": model,
            "choices": [shape.final_choice(i, choice) for i, choice in enumerate(choices)],
            "usage": generation.result().usage(),
        }
    )


class ChunkEncoder:
    """Encodes the chunks of one streamed response."""

    def __init__(self, object_name: str, response_id: str, created: int, model: str, include_usage: bool) -> None:
        head = _dumps({"id": response_id, "object": object_name, "created": created, "model": model})
        self._prefix = ("data: " + head[:-1] + ',"choices":[').encode()
        self._suffix = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        self._usage_prefix = ("data: " + head[:-1] + ',"choices":[],"usage":').encode()
        self.include_usage = include_usage

    def choices(self, encoded_choices: list[str]) -> bytes:
        joined = encoded_choices[0] if len(encoded_choices) == 1 else ",".join(encoded_choices)
        return self._prefix + joined.encode() + self._suffix

    def usage(self, result: GenerationResult) -> bytes:
        return self._usage_prefix + _dumps(result.usage()).encode() + b"}\n\n"


def error_event(error: APIError) -> bytes:
    return b"data: " + _dumps(error.envelope()).encode() + b"\n\n"


async def sse_events(
    generation: Generation, shape: ChoiceShape, encoder: ChunkEncoder, request_id: str
) -> AsyncIterator[bytes]:
    """The body of a streamed response: opening chunk, one chunk per engine step, then usage and [DONE]."""
    opening = shape.opening()
    if opening:
        yield encoder.choices(opening)
    stream_choices = shape.stream_choices
    try:
        async for index, step in generation.steps():
            per_delta = [stream_choices(index, d) for d in step.deltas if d.text or d.finish_reason or d.logprobs]
            if len(per_delta) == 1 and len(per_delta[0]) == 1:  # one choice, one chunk: nearly every token
                yield encoder.choices(per_delta[0])
                continue
            for k in range(max(map(len, per_delta), default=0)):  # a choice's k-th chunk goes in chunk k
                yield encoder.choices([choices[k] for choices in per_delta if len(choices) > k])
        interruption = generation.interruption()
        if interruption is not None:
            yield error_event(interruption)
    except Exception as exc:
        yield error_event(mid_stream_error(exc, request_id))
    if encoder.include_usage:
        yield encoder.usage(generation.result())
    yield DONE


async def collect(request: Request, generation: Generation) -> list[CollectedChoice]:
    """Gather every choice (numbered prompt by prompt); a client that disconnects meanwhile aborts the request."""
    choices: dict[tuple[int, int], CollectedChoice] = {}

    async def consume() -> None:
        async for prompt_index, step in generation.steps():
            for delta in step.deltas:
                choice = choices.get((prompt_index, delta.index))
                if choice is None:
                    choice = choices[prompt_index, delta.index] = CollectedChoice()
                choice.parts.append(delta.text)
                choice.finish_reason = delta.finish_reason or choice.finish_reason
                if delta.logprobs:
                    choice.logprobs.extend(delta.logprobs)

    consumer = asyncio.create_task(consume())
    watcher = asyncio.create_task(_client_gone(request))
    try:
        await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not consumer.done():
            consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    if consumer.cancelled():
        # The client left: nobody reads an answer. 499 keeps the metrics and the access log honest, and
        # no traceback is logged for what is an ordinary event under load.
        raise ClientClosed("The client closed the connection before the response was ready.")
    consumer.result()
    interruption = generation.interruption()
    if interruption is not None:
        raise interruption
    return [choices[key] for key in sorted(choices)]


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def token_logprobs(logprobs: list[TokenLogprob], top_logprobs: int) -> list[dict]:
    """Chat's `logprobs.content`."""
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": list(lp.token.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in lp.top[:top_logprobs]],
        }
        for lp in logprobs
    ]


def text_logprobs(logprobs: list[TokenLogprob], top_logprobs: int, offset: int = 0) -> dict:
    """Text completions' `logprobs` (tokens, token_logprobs, top_logprobs, text_offset)."""
    tokens, values, tops, offsets = [], [], [], []
    for lp in logprobs:
        tokens.append(lp.token)
        values.append(lp.logprob)
        tops.append(dict(lp.top[:top_logprobs]) if top_logprobs else None)
        offsets.append(offset)
        offset += len(lp.token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


class ChatShape:
    """Choices of `/v1/chat/completions`; with the run's `readers` (one per choice), tool calls are read out of
    the text."""

    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def __init__(self, n: int, top_logprobs: int | None, run: ChatRun | None = None) -> None:
        self.n = n
        self.top_logprobs = top_logprobs  # None: no logprobs asked for
        self.readers = run.readers if run is not None else None
        self._run = run
        self._called = [False] * n

    def opening(self) -> list[str]:
        role = '{{"index":{},"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}'
        return [role.format(i) for i in range(self.n)]

    def stream_choices(self, prompt_index: int, delta: ChoiceDelta) -> list[str]:
        if self.readers is not None:
            return self._stream_with_tools(self.readers[delta.index], delta)
        if delta.finish_reason is None and delta.logprobs is None:  # the per-token case: encode the text alone
            return [_content_choice(delta.index, delta.text)]
        choice: dict = {
            "index": delta.index,
            "delta": {"content": delta.text} if delta.text else {},
            "logprobs": None,
            "finish_reason": delta.finish_reason,
        }
        if delta.logprobs is not None and self.top_logprobs is not None:
            choice["logprobs"] = {"content": token_logprobs(delta.logprobs, self.top_logprobs)}
        return [_dumps(choice)]

    def _stream_with_tools(self, reader: ToolCallReader, delta: ChoiceDelta) -> list[str]:
        """Content, then each call's opening and argument fragments, then (at the end) the finish reason alone."""
        index = delta.index
        piece = reader.feed(delta.text, delta.token_ids)
        choices = [_content_choice(index, piece.content)] if piece.content else []
        calls = piece.calls
        if delta.finish_reason is not None:
            last_calls, finish_reason = reader.finish(delta.finish_reason)
            calls = [*calls, *last_calls]
        for call in calls:
            self._called[index] = self._called[index] or call.id is not None
            choices.append(_chat_chunk_choice(index, {"tool_calls": [call.openai_shape()]}))
        if delta.finish_reason is not None:
            choices.append(_chat_chunk_choice(index, {}, finish_reason))
            self._count(index, self._called[index])
        return choices

    def final_choice(self, index: int, choice: CollectedChoice) -> dict:
        logprobs = None
        if self.top_logprobs is not None:
            logprobs = {"content": token_logprobs(choice.logprobs, self.top_logprobs)}
        message: dict = {"role": "assistant", "content": choice.text}
        finish_reason = choice.finish_reason
        if self.readers is not None:
            read = self.readers[index].read(choice.text, finish_reason)
            message["content"], finish_reason = read.content, read.finish_reason
            if read.calls:
                message["tool_calls"] = [call.openai_shape() for call in read.calls]
            self._count(index, bool(read.calls))
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}

    def _count(self, index: int, called: bool) -> None:
        if self._run is not None:
            self._run.choice_read(index, called)


def _content_choice(index: int, text: str) -> str:
    """A chat chunk's choice carrying only text, written without a dict: this runs once per token."""
    return f'{{"index":{index},"delta":{{"content":{_encode_text(text)}}},"logprobs":null,"finish_reason":null}}'


def _chat_chunk_choice(index: int, delta: dict, finish_reason: str | None = None) -> str:
    return _dumps({"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason})


class CompletionShape:
    """Choices of `/v1/completions`: `n` per prompt, numbered prompt by prompt, optionally echoing the prompt."""

    object_name = "text_completion"
    chunk_object_name = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, n: int, logprobs: int | None, echoed_prompts: list[str] | None) -> None:
        self.n = n
        self.logprobs = logprobs
        self.echoed_prompts = echoed_prompts

    def opening(self) -> list[str]:
        if self.echoed_prompts is None:
            return []
        return [
            _dumps({"index": i, "text": self.echoed_prompts[i // self.n], "logprobs": None, "finish_reason": None})
            for i in range(len(self.echoed_prompts) * self.n)
        ]

    def stream_choices(self, prompt_index: int, delta: ChoiceDelta) -> list[str]:
        choice: dict = {
            "index": prompt_index * self.n + delta.index,
            "text": delta.text,
            "logprobs": None,
            "finish_reason": delta.finish_reason,
        }
        if self.logprobs is not None and delta.logprobs is not None:
            choice["logprobs"] = text_logprobs(delta.logprobs, self.logprobs)
        return [_dumps(choice)]

    def final_choice(self, index: int, choice: CollectedChoice) -> dict:
        echo = self.echoed_prompts[index // self.n] if self.echoed_prompts is not None else ""
        return {
            "index": index,
            "text": echo + choice.text,
            "logprobs": text_logprobs(choice.logprobs, self.logprobs) if self.logprobs is not None else None,
            "finish_reason": choice.finish_reason,
        }
