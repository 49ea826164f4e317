"""POST /v1/chat/completions."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.auth import APIKeyDep
from service.deps import RunnerDep
from service.prompts import render_chat
from service.protocol import ChatCompletionRequest, GenerationParams
from service.routes.responses import collect, start_stream
from service.runner import RequestRunner, RunResult
from service.streaming import ChunkEncoder, chat_choice, chat_logprobs, sse_events, usage

router = APIRouter(prefix="/v1", tags=["chat"])


def chat_params(body: ChatCompletionRequest, runner: RequestRunner, num_prompt_tokens: int) -> GenerationParams:
    schema = None
    if body.response_format and body.response_format.type == "json_schema":
        schema = body.response_format.json_schema.schema_ or {"type": "object"}
    return body.generation_params(
        runner.max_tokens_for(body.requested_max_tokens(), num_prompt_tokens),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        json_schema=schema,
        json_object=bool(body.response_format and body.response_format.type == "json_object"),
    )


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, runner: RunnerDep, _: APIKeyDep
) -> JSONResponse | StreamingResponse:
    """Chat completion: rendered with the model's (or adapter's) chat template."""
    model = runner.registry.resolve(body.model)
    request.state.model_label = model.name
    prompt_ids = render_chat(runner.tokenizer, body.messages, model.chat_template)
    params = chat_params(body, runner, len(prompt_ids))
    response_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    top = body.top_logprobs or 0
    result = RunResult()
    steps = runner.run(model, "chat", [prompt_ids], [params], result)

    if body.stream:
        first = await start_stream(steps)
        include_usage = body.include_usage_in_stream()
        encoder = ChunkEncoder("chat.completion.chunk", response_id, created, body.model, include_usage)
        role = ",".join(
            f'{{"index":{i},"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}'
            for i in range(body.n)
        )
        events = sse_events(
            first,
            steps,
            encoder,
            lambda _, delta: chat_choice(delta, top),
            result,
            opening=encoder.choices([role]),
            include_usage=include_usage,
        )
        return StreamingResponse(events, media_type="text/event-stream")

    choices = await collect(request, steps, body.n, result)
    return JSONResponse(
        {
            "id": response_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": choice.text},
                    "logprobs": {"content": chat_logprobs(choice.as_delta(), top)} if body.logprobs else None,
                    "finish_reason": choice.finish_reason,
                }
                for i, choice in enumerate(choices)
            ],
            "usage": usage(result),
        }
    )
