"""The hand-built SSE chunks are valid JSON of OpenAI's shape (fast unit tests, no engine)."""

from __future__ import annotations

import json

import pytest

from service.api.render.chat import ChatShape, ChunkEncoder, CollectedChoice, CompletionShape
from service.engine.types import ChoiceDelta, TokenLogprob
from service.pipeline.generation import GenerationResult


def decode(event: bytes) -> dict:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return json.loads(event[6:])


@pytest.mark.parametrize("text", ['東京 "quoted"\n', "back\\slash \u2028 \x00", ""])
def test_chunk_is_openai_shaped_with_unicode_and_quotes(text):
    encoder = ChunkEncoder("chat.completion.chunk", "id-1", 123, 'm"odel', include_usage=True)
    shape = ChatShape(n=1, top_logprobs=None)
    chunk = decode(encoder.choices(shape.stream_choices(0, ChoiceDelta(0, text, 2, None))))
    assert chunk == {
        "id": "id-1",
        "object": "chat.completion.chunk",
        "created": 123,
        "model": 'm"odel',
        "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }
    usage = decode(encoder.usage(GenerationResult(num_prompt_tokens=3, num_completion_tokens=2, aborted=False)))
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert usage["choices"] == []


def test_chat_finish_and_logprobs_chunks():
    shape = ChatShape(n=2, top_logprobs=1)
    assert [json.loads(c)["delta"] for c in shape.opening()] == [{"role": "assistant", "content": ""}] * 2
    lp = TokenLogprob("a", -0.5, (("a", -0.5), ("b", -1.0)))
    choice = json.loads(shape.stream_choices(0, ChoiceDelta(1, "a", 1, "stop", [lp]))[0])
    assert choice["index"] == 1 and choice["finish_reason"] == "stop"
    assert choice["logprobs"]["content"][0]["top_logprobs"] == [{"token": "a", "logprob": -0.5, "bytes": [97]}]


def test_completion_choices_are_numbered_prompt_by_prompt_and_echo():
    shape = CompletionShape(n=2, logprobs=None, echoed_prompts=["p0", "p1"])
    assert [json.loads(c)["text"] for c in shape.opening()] == ["p0", "p0", "p1", "p1"]
    assert json.loads(shape.stream_choices(1, ChoiceDelta(1, "x", 1, None))[0])["index"] == 3
    final = shape.final_choice(2, CollectedChoice(parts=["a", "b"], finish_reason="length"))
    assert final == {"index": 2, "text": "p1ab", "logprobs": None, "finish_reason": "length"}
