"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.deps import CallDep, ContextDep, ModelDep
from service.api.render.chat import ChatShape, respond
from service.api.schemas.chat import ChatCompletionRequest
from service.pipeline.start import start_chat

router = APIRouter(tags=["chat"])


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, context: ContextDep, model: ModelDep, call: CallDep
) -> JSONResponse | StreamingResponse:
    """Chat completion, rendered with the model's (or adapter's) chat template; tool calls read from the output."""
    run = await start_chat(body, "chat", context, model, call)
    shape = ChatShape(body.n, (body.top_logprobs or 0) if body.logprobs else None, run)
    return await respond(request, run.generation, shape, body.model, body.stream, body.include_usage_in_stream())
