"""One request's prompts in the engine: admitted, tracked, and summed up as a `GenerationResult` value.

`Generation.start` asks admission control for a place (429/403/400 before anything runs), registers the
request with the lifecycle (so a drain can abort it) and the metrics, arms its deadline, sends every prompt
to the engine and awaits the first step. Everything that can refuse a request (draining, admission, the
engine's own validation of a schema or a prompt, a deadline passed while queued) therefore raises before
any response byte, as a proper HTTP status; the client sees its first token at the same moment either way.
`steps()` then yields `(prompt_index, EngineStep)` pairs; however it ends (finished, client gone, engine
error, aborted by the drain or the deadline) the place, the metrics and the drain bookkeeping are settled
once, in its `finally`.

The deadline is a timer, not a timeout around each step: when it fires it aborts the engine requests, whose
streams then end unfinished, and `interruption()` says why. Nothing is added per token.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from service.access.admission import Ticket
from service.adapters.registry import ServedModel
from service.context import AppContext
from service.engine.types import EngineClient, EngineStep, GenerationParams
from service.errors import APIError, ClientClosed, DeadlineExceeded, ServiceUnavailable
from service.lifecycle import Lifecycle
from service.metrics import RequestTracker
from service.pipeline.call import Call, Outcome

ABORTED = "The server shut down before this response finished."

Tagged = tuple[int, EngineStep]
ReleaseAdapter = Callable[[float | None], None]  # called once the engine stream is closed, with the TTFT
STATUS_CLIENT_CLOSED = ClientClosed.status


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
        ticket: Ticket,
        release_adapter: ReleaseAdapter,
        stream: AsyncIterator[EngineStep] | AsyncIterator[Tagged],
        lifecycle_key: str,
        num_prompts: int,
        num_choices: int,
        num_prompt_tokens: int,
    ) -> None:
        self._lifecycle = lifecycle
        self._tracker = tracker
        self._ticket = ticket
        self._release_adapter = release_adapter
        self._deadline: asyncio.TimerHandle | None = None
        self._abort: asyncio.Task | None = None
        self._timeout = 0.0
        self.expired = False
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
        call: Call,
    ) -> Generation:
        """Admit the request, hand its prompts to the engine and wait for the first step. (Readiness was
        checked once, by the route's `ModelDep`; a drain that starts after it waits for this request.)"""
        num_choices, num_prompt_tokens = sum(p.n for p in params), sum(map(len, prompts))
        timeout = call.timeout
        ticket = context.require_admission().admit(call.record.tenant, served.name, num_choices, num_prompt_tokens)
        release = context.adapters.lease(served) if context.adapters is not None else _no_lease
        key = uuid.uuid4().hex  # engine ids must be unique even when clients reuse their X-Request-Id
        engine_ids = [f"{key}-{i}" for i in range(len(prompts))]
        parts = [
            engine.generate(engine_id, ids, p, served.adapter)
            for engine_id, ids, p in zip(engine_ids, prompts, params, strict=True)
        ]
        stream = parts[0] if len(parts) == 1 else _merged(parts)
        tracker = context.metrics.track(served.name, endpoint)
        generation = cls(
            context.lifecycle, tracker, ticket, release, stream, key, len(prompts), num_choices, num_prompt_tokens
        )
        call.record.track(generation)
        context.lifecycle.started(key, engine_ids)
        generation._arm_deadline(timeout, lambda: engine.abort(engine_ids))
        try:
            first = await anext(stream, None)
            ticket.started()
            if generation.expired:
                raise DeadlineExceeded(timeout)
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
                status = self.interruption().status  # ended without stop/length: aborted
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

    def outcome(self, model: str) -> Outcome:
        """Tokens and time to first token so far, for the access log and the per-key metrics."""
        tracker = self._tracker
        return Outcome(model, self.num_prompt_tokens, tracker.num_output_tokens, tracker.ttft_s)

    def interruption(self) -> APIError | None:
        """Why the steps ended with choices unfinished (the deadline, or the drain), or None."""
        if self._num_finished >= self._num_choices:
            return None
        return DeadlineExceeded(self._timeout) if self.expired else ServiceUnavailable(ABORTED)

    def _arm_deadline(self, timeout: float, abort: Callable[[], Awaitable[None]]) -> None:
        def expire() -> None:
            self.expired = True
            self._abort = asyncio.get_running_loop().create_task(abort())  # held: the loop keeps weak refs

        self._timeout = timeout
        self._deadline = asyncio.get_running_loop().call_later(timeout, expire)

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
        if self._deadline is not None:
            self._deadline.cancel()
        try:
            await self._stream.aclose()
        finally:
            tracker = self._tracker
            self._release_adapter(tracker.ttft_s)  # after the close: the engine has the abort before the version can go
            tracker.finish(status, self.num_prompt_tokens)
            self._ticket.release(tracker.num_output_tokens)
            self._lifecycle.finished(self._lifecycle_key)


def _no_lease(ttft_s: float | None) -> None:
    return None


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
