"""One API request through the engine: admission, prompt-length check, metrics, drain bookkeeping.

Routes resolve the model and render the prompt, then call `RequestRunner.run`, which yields
`(prompt_index, EngineStep)` pairs; the route only shapes them into JSON or SSE. Whatever way the request
ends (finished, client gone, engine error, aborted by the drain) the tracker and the drain bookkeeping are
settled in one `finally`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from service.engine import Engine, EngineStep
from service.errors import APIError, InvalidRequest, ServiceUnavailable
from service.lifecycle import ServiceState
from service.metrics import STATUS_CLIENT_CLOSED, ServiceMetrics
from service.protocol import GenerationParams
from service.registry import ModelRegistry, ServedModel


@dataclass(slots=True)
class RunResult:
    """Filled in while a run streams; read by the route for `usage`."""

    num_prompt_tokens: int = 0
    num_completion_tokens: int = 0
    aborted: bool = False


class RequestRunner:
    """Everything a route needs beyond its own request: the engine, models, tokenizer, metrics and state."""

    def __init__(
        self,
        engine: Engine,
        registry: ModelRegistry,
        tokenizer: PreTrainedTokenizerBase,
        metrics: ServiceMetrics,
        state: ServiceState,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.state = state
        self.vocab_size = len(tokenizer)

    @property
    def max_model_len(self) -> int:
        return self.engine.info.max_model_len

    def max_tokens_for(self, requested: int | None, num_prompt_tokens: int) -> int:
        """The output budget: as requested, or the rest of the context window; 400 when it cannot fit."""
        room = self.max_model_len - num_prompt_tokens
        if requested is None:
            if room < 1:
                raise InvalidRequest(
                    f"This model's maximum context length is {self.max_model_len} tokens; the prompt has "
                    f"{num_prompt_tokens} tokens, leaving no room for output.",
                    param="messages",
                    code="context_length_exceeded",
                )
            return room
        if requested > room:
            raise InvalidRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{num_prompt_tokens + requested} tokens ({num_prompt_tokens} in the prompt, {requested} for "
                "the completion). Please reduce the prompt or the completion length.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested

    async def run(
        self,
        model: ServedModel,
        endpoint: str,
        prompts: list[list[int]],
        params: list[GenerationParams],
        result: RunResult,
    ) -> AsyncIterator[tuple[int, EngineStep]]:
        """Stream engine steps of every prompt, tagged with the prompt's index."""
        self.state.admit()
        request_id = uuid.uuid4().hex
        tracker = self.metrics.track(model.name, endpoint)
        engine_ids = [f"{request_id}-{i}" for i in range(len(prompts))]
        self.state.started(request_id, engine_ids)
        status = 200
        try:
            parts = [
                self.engine.generate(engine_id, ids, p, model.adapter)
                for engine_id, ids, p in zip(engine_ids, prompts, params, strict=True)
            ]
            steps = _tagged(parts[0], 0) if len(parts) == 1 else _merged(parts)
            num_finished = 0
            async for index, step in steps:
                tracker.on_tokens(sum(d.num_new_tokens for d in step.deltas))
                num_finished += sum(1 for d in step.deltas if d.finish_reason)
                yield index, step
            # Choices that ended without stop/length were aborted in the engine (the drain does that).
            if num_finished < sum(p.n for p in params):
                result.aborted = True
                status = ServiceUnavailable.status
            result.num_prompt_tokens = sum(len(ids) for ids in prompts)
            result.num_completion_tokens = tracker.num_output_tokens
        except APIError as exc:
            status = exc.status
            raise
        except (asyncio.CancelledError, GeneratorExit):
            status = STATUS_CLIENT_CLOSED
            raise
        finally:
            tracker.finish(status, sum(len(ids) for ids in prompts))
            self.state.finished(request_id)


async def _tagged(steps: AsyncIterator[EngineStep], index: int) -> AsyncIterator[tuple[int, EngineStep]]:
    async for step in steps:
        yield index, step


async def _merged(parts: list[AsyncIterator[EngineStep]]) -> AsyncIterator[tuple[int, EngineStep]]:
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
