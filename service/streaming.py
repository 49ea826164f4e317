"""Server-sent events, built as bytes straight from engine deltas.

Each chunk's constant part (id, object, created, model) is encoded once per request; per delta only the new
text (and logprobs, if asked) is JSON-encoded. That is the whole lean path from engine output to SSE bytes:
no per-chunk response objects. Errors after the stream has started end it with a final `error` event in
OpenAI's envelope, then `[DONE]`, so a client always sees a well-formed end.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from service.engine import EngineDelta, EngineStep
from service.errors import APIError, ServiceUnavailable
from service.runner import RunResult

DONE = b"data: [DONE]\n\n"
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def usage(result: RunResult) -> dict:
    return {
        "prompt_tokens": result.num_prompt_tokens,
        "completion_tokens": result.num_completion_tokens,
        "total_tokens": result.num_prompt_tokens + result.num_completion_tokens,
    }


class ChunkEncoder:
    """Encodes the chunks of one streamed response."""

    def __init__(self, object_name: str, response_id: str, created: int, model: str, include_usage: bool):
        head = _dumps({"id": response_id, "object": object_name, "created": created, "model": model})
        self._prefix = ("data: " + head[:-1] + ',"choices":[').encode()
        self._suffix = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        self._usage_prefix = ("data: " + head[:-1] + ',"choices":[],"usage":').encode()

    def choices(self, encoded_choices: list[str]) -> bytes:
        return self._prefix + ",".join(encoded_choices).encode() + self._suffix

    def usage(self, result: RunResult) -> bytes:
        return self._usage_prefix + _dumps(usage(result)).encode() + b"}\n\n"


def error_event(error: APIError) -> bytes:
    return b"data: " + _dumps(error.envelope()).encode() + b"\n\n"


def chat_choice(delta: EngineDelta, top_logprobs: int) -> str:
    body = {"content": delta.text} if delta.text else {}
    choice: dict = {
        "index": delta.index,
        "delta": body,
        "logprobs": None,
        "finish_reason": delta.finish_reason,
    }
    if delta.logprobs is not None:
        choice["logprobs"] = {"content": chat_logprobs(delta, top_logprobs)}
    return _dumps(choice)


def chat_logprobs(delta: EngineDelta, top_logprobs: int) -> list[dict]:
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": list(lp.token.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in lp.top[:top_logprobs]],
        }
        for lp in delta.logprobs or ()
    ]


def completion_logprobs(deltas: list[EngineDelta], top_logprobs: int, offset: int = 0) -> dict:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for delta in deltas:
        for lp in delta.logprobs or ():
            tokens.append(lp.token)
            token_logprobs.append(lp.logprob)
            tops.append(dict(lp.top[:top_logprobs]) if top_logprobs else None)
            offsets.append(offset)
            offset += len(lp.token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def completion_choice(delta: EngineDelta, index: int, top_logprobs: int | None) -> str:
    choice: dict = {
        "index": index,
        "text": delta.text,
        "logprobs": None,
        "finish_reason": delta.finish_reason,
    }
    if top_logprobs is not None and delta.logprobs is not None:
        choice["logprobs"] = completion_logprobs([delta], top_logprobs)
    return _dumps(choice)


async def sse_events(
    first: tuple[int, EngineStep] | None,
    steps: AsyncIterator[tuple[int, EngineStep]],
    encoder: ChunkEncoder,
    encode_choice: Callable[[int, EngineDelta], str],
    result: RunResult,
    opening: bytes = b"",
    include_usage: bool = False,
) -> AsyncIterator[bytes]:
    """The body of a streamed response; `first` is the step the route already awaited."""
    if opening:
        yield opening
    try:
        if first is not None:
            yield _encode_step(first, encoder, encode_choice)
            async for item in steps:
                chunk = _encode_step(item, encoder, encode_choice)
                if chunk:
                    yield chunk
        if result.aborted:
            yield error_event(ServiceUnavailable("The server shut down before this response finished."))
    except APIError as exc:
        yield error_event(exc)
    if include_usage:
        yield encoder.usage(result)
    yield DONE


def _encode_step(
    item: tuple[int, EngineStep], encoder: ChunkEncoder, encode_choice: Callable[[int, EngineDelta], str]
) -> bytes:
    index, step = item
    choices = [encode_choice(index, d) for d in step.deltas if d.text or d.finish_reason or d.logprobs]
    return encoder.choices(choices) if choices else b""
