"""The hand-built SSE chunks are valid JSON of OpenAI's shape (fast unit tests, no engine)."""

from __future__ import annotations

import asyncio
import json

from service.engine import EngineDelta, EngineStep
from service.errors import InvalidRequest
from service.runner import RunResult
from service.streaming import DONE, ChunkEncoder, chat_choice, sse_events


def decode(event: bytes) -> dict:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return json.loads(event[6:])


def test_chunk_is_openai_shaped_with_unicode_and_quotes():
    encoder = ChunkEncoder("chat.completion.chunk", "id-1", 123, 'm"odel', include_usage=True)
    delta = EngineDelta(index=0, text='東京 "quoted"\n', num_new_tokens=2, finish_reason=None)
    chunk = decode(encoder.choices([chat_choice(delta, 0)]))
    assert chunk == {
        "id": "id-1",
        "object": "chat.completion.chunk",
        "created": 123,
        "model": 'm"odel',
        "choices": [{"index": 0, "delta": {"content": '東京 "quoted"\n'}, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }
    result = RunResult(num_prompt_tokens=3, num_completion_tokens=2)
    assert decode(encoder.usage(result))["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
    }


def test_error_mid_stream_ends_with_error_event_and_done():
    async def steps():
        yield 0, EngineStep([EngineDelta(0, "a", 1, None)], 3, False)
        raise InvalidRequest("broken")

    async def collect():
        encoder = ChunkEncoder("chat.completion.chunk", "id", 1, "m", include_usage=False)
        gen = steps()
        first = await anext(gen)
        return [e async for e in sse_events(first, gen, encoder, lambda _, d: chat_choice(d, 0), RunResult())]

    events = asyncio.run(collect())
    assert decode(events[0])["choices"][0]["delta"] == {"content": "a"}
    assert decode(events[1])["error"]["message"] == "broken"
    assert events[-1] == DONE
