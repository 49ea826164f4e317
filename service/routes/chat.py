"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.deps import CallDep, ContextDep, ModelDep
from service.generation import Generation
from service.output import ChatShape, respond
from service.prompts import render_chat
from service.protocol import ChatCompletionRequest
from service.sampling import generation_params

router = APIRouter(tags=["chat"])


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, context: ContextDep, model: ModelDep, call: CallDep
) -> JSONResponse | StreamingResponse:
    """Chat completion, rendered with the model's (or adapter's) chat template."""
    served = model.registry.resolve(body.model)
    call.record.model = served.name
    prompt = await render_chat(model.tokenizer, body.messages, served.chat_template, model.max_prompt_chars)
    params = generation_params(body, len(prompt), model.max_model_len)
    generation = await Generation.start(context, model.engine, served, "chat", [prompt], [params], call)
    shape = ChatShape(body.n, (body.top_logprobs or 0) if body.logprobs else None)
    return await respond(request, generation, shape, body.model, body.stream, body.include_usage_in_stream())
