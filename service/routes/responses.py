"""What chat and text completions share: await the first step of a stream, or collect a whole response."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from service.engine import EngineDelta, EngineStep, TokenLogprob
from service.errors import ServiceUnavailable
from service.runner import RunResult


@dataclass(slots=True)
class ChoiceBuffer:
    """One choice of a non-streamed response, accumulated from deltas."""

    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def as_delta(self) -> EngineDelta:
        return EngineDelta(0, self.text, len(self.logprobs), self.finish_reason, self.logprobs)


async def start_stream(steps: AsyncIterator[tuple[int, EngineStep]]) -> tuple[int, EngineStep] | None:
    """Await the first engine step before any header is sent.

    Admission (draining, loading), engine-side validation (a bad JSON schema, say) and queue caps raise on
    the first step; awaiting it here turns them into a proper HTTP status instead of a 200 stream that
    carries an error. The client sees the first token at the same moment either way.
    """
    try:
        return await anext(steps)
    except StopAsyncIteration:
        return None


async def collect(
    request: Request, steps: AsyncIterator[tuple[int, EngineStep]], n: int, result: RunResult
) -> list[ChoiceBuffer]:
    """Gather every choice; a client that disconnects meanwhile aborts the engine request."""
    choices: dict[int, ChoiceBuffer] = {}

    async def consume() -> None:
        async for prompt_index, step in steps:
            for delta in step.deltas:
                choice = choices.setdefault(prompt_index * n + delta.index, ChoiceBuffer())
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
    consumer.result()
    if result.aborted:
        raise ServiceUnavailable("The server shut down before this response finished.")
    return [choices.get(i, ChoiceBuffer()) for i in range(max(choices, default=-1) + 1)]


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
