"""One request's prompts in the engine: admitted, tracked, and summed up as a `GenerationResult` value.

`Generation.start` registers the request with the lifecycle (so a drain can abort it) and the metrics, sends
every prompt to the engine and awaits the first step. Everything that can refuse a request (draining, the
engine's queue cap, the engine's own validation of a schema or a prompt) therefore raises before any
response byte, as a proper HTTP status; the client sees its first token at the same moment either way.
`steps()` then yields `(prompt_index, EngineStep)` pairs; however it ends (finished, client gone, engine
error, aborted by the drain) the metrics and the drain bookkeeping are settled once, in its `finally`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from service.context import AppContext
from service.engine_types import EngineClient, EngineStep, GenerationParams
from service.errors import APIError, ServiceUnavailable
from service.lifecycle import Lifecycle
from service.metrics import RequestTracker
from service.middleware import STATUS_CLIENT_CLOSED
from service.registry import ServedModel

Tagged = tuple[int, EngineStep]


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """What a finished generation amounts to: token counts and whether the engine aborted it (drain)."""

    num_prompt_tokens: int
    num_completion_tokens: int
    aborted: bool

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.num_prompt_tokens,
            "completion_tokens": self.num_completion_tokens,
            "total_tokens": self.num_prompt_tokens + self.num_completion_tokens,
        }


class Generation:
    """Prompts of one API request running in the engine; build it with `start()`."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        tracker: RequestTracker,
        stream: AsyncIterator[EngineStep] | AsyncIterator[Tagged],
        lifecycle_key: str,
        num_prompts: int,
        num_choices: int,
        num_prompt_tokens: int,
    ) -> None:
        self._lifecycle = lifecycle
        self._tracker = tracker
        self._stream = stream
        self._single = num_prompts == 1  # then `stream` is the engine's own iterator: one layer less per token
        self._num_choices = num_choices
        self._num_finished = 0
        self._first: Tagged | None = None
        self._settled = False
        self._lifecycle_key = lifecycle_key
        self.num_prompt_tokens = num_prompt_tokens

    @classmethod
    async def start(
        cls,
        context: AppContext,
        engine: EngineClient,
        served: ServedModel,
        endpoint: str,
        prompts: list[list[int]],
        params: list[GenerationParams],
    ) -> Generation:
        """Admit the request, hand its prompts to the engine and wait for the first step."""
        context.lifecycle.admit()
        key = uuid.uuid4().hex  # engine ids must be unique even when clients reuse their X-Request-Id
        engine_ids = [f"{key}-{i}" for i in range(len(prompts))]
        parts = [
            engine.generate(engine_id, ids, p, served.adapter)
            for engine_id, ids, p in zip(engine_ids, prompts, params, strict=True)
        ]
        stream = parts[0] if len(parts) == 1 else _merged(parts)
        tracker = context.metrics.track(served.name, endpoint)
        num_choices, num_prompt_tokens = sum(p.n for p in params), sum(map(len, prompts))
        generation = cls(context.lifecycle, tracker, stream, key, len(prompts), num_choices, num_prompt_tokens)
        context.lifecycle.started(key, engine_ids)
        try:
            first = await anext(stream, None)
            generation._first = (0, first) if len(parts) == 1 and first is not None else first
        except APIError as exc:
            await generation._settle(exc.status)
            raise
        except BaseException:
            await generation._settle(STATUS_CLIENT_CLOSED)
            raise
        return generation

    async def steps(self) -> AsyncIterator[Tagged]:
        """Every engine step, the first included, tagged with its prompt's index."""
        status = 200
        try:
            if self._first is not None:
                yield self._count(self._first)
                if self._single:
                    async for step in self._stream:
                        yield self._count((0, step))
                else:
                    async for item in self._stream:
                        yield self._count(item)
            if self._num_finished < self._num_choices:
                status = ServiceUnavailable.status  # ended without stop/length: aborted by the drain
        except APIError as exc:
            status = exc.status
            raise
        except (asyncio.CancelledError, GeneratorExit):
            status = STATUS_CLIENT_CLOSED
            raise
        except Exception:
            status = 500
            raise
        finally:
            await self._settle(status)

    def result(self) -> GenerationResult:
        """Token counts so far; `aborted` once the steps ended with choices unfinished."""
        return GenerationResult(
            num_prompt_tokens=self.num_prompt_tokens,
            num_completion_tokens=self._tracker.num_output_tokens,
            aborted=self._num_finished < self._num_choices,
        )

    def _count(self, item: Tagged) -> Tagged:
        num_tokens = 0
        for delta in item[1].deltas:  # a plain loop: this runs once per token of every stream
            num_tokens += delta.num_new_tokens
            if delta.finish_reason:
                self._num_finished += 1
        self._tracker.on_tokens(num_tokens)
        return item

    async def _settle(self, status: int) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            await self._stream.aclose()
        finally:
            self._tracker.finish(status, self.num_prompt_tokens)
            self._lifecycle.finished(self._lifecycle_key)


async def _merged(parts: list[AsyncIterator[EngineStep]]) -> AsyncIterator[Tagged]:
    """Interleave several prompts' steps as they arrive (completions with a list of prompts)."""
    queue: asyncio.Queue[tuple[int, EngineStep | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, steps: AsyncIterator[EngineStep]) -> None:
        try:
            async for step in steps:
                await queue.put((index, step))
            await queue.put((index, None))
        except BaseException as exc:
            await queue.put((index, exc))
            raise

    tasks = [asyncio.create_task(pump(i, part)) for i, part in enumerate(parts)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
