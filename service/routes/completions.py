"""POST /v1/completions."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.auth import APIKeyDep
from service.deps import RunnerDep
from service.engine import EngineDelta
from service.prompts import encode_prompt
from service.protocol import CompletionRequest, GenerationParams
from service.routes.responses import collect, start_stream
from service.runner import RequestRunner, RunResult
from service.streaming import ChunkEncoder, completion_choice, completion_logprobs, sse_events, usage

router = APIRouter(prefix="/v1", tags=["completions"])


def completion_params(body: CompletionRequest, runner: RequestRunner, num_prompt_tokens: int) -> GenerationParams:
    return body.generation_params(runner.max_tokens_for(body.max_tokens, num_prompt_tokens), logprobs=body.logprobs)


@router.post("/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, runner: RunnerDep, _: APIKeyDep
) -> JSONResponse | StreamingResponse:
    """Text completion of one prompt or a batch of prompts (text or token ids)."""
    model = runner.registry.resolve(body.model)
    request.state.model_label = model.name
    prompts = [encode_prompt(runner.tokenizer, p, runner.vocab_size) for p in body.prompts()]
    params = [completion_params(body, runner, len(ids)) for ids in prompts]
    texts = [p if isinstance(p, str) else runner.tokenizer.decode(p) for p in body.prompts()]
    response_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    result = RunResult()
    steps = runner.run(model, "completions", prompts, params, result)
    n = body.n

    if body.stream:
        first = await start_stream(steps)
        include_usage = body.include_usage_in_stream()
        encoder = ChunkEncoder("text_completion", response_id, created, body.model, include_usage)
        opening = b""
        if body.echo:
            echoed = [EngineDelta(0, texts[i // n], 0, None) for i in range(len(prompts) * n)]
            opening = encoder.choices([completion_choice(d, i, None) for i, d in enumerate(echoed)])
        events = sse_events(
            first,
            steps,
            encoder,
            lambda prompt_index, delta: completion_choice(delta, prompt_index * n + delta.index, body.logprobs),
            result,
            opening=opening,
            include_usage=include_usage,
        )
        return StreamingResponse(events, media_type="text/event-stream")

    choices = await collect(request, steps, n, result)
    return JSONResponse(
        {
            "id": response_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": i,
                    "text": (texts[i // n] if body.echo else "") + choice.text,
                    "logprobs": completion_logprobs([choice.as_delta()], body.logprobs)
                    if body.logprobs is not None
                    else None,
                    "finish_reason": choice.finish_reason,
                }
                for i, choice in enumerate(choices)
            ],
            "usage": usage(result),
        }
    )
