"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.deps import CallDep, ContextDep, ModelDep
from service.api.render.chat import ChatShape, respond
from service.api.schemas.chat import ChatCompletionRequest
from service.pipeline.generation import Generation
from service.pipeline.prompts import render_chat
from service.pipeline.sampling import generation_params
from service.pipeline.tools import ToolCallPolicy

router = APIRouter(tags=["chat"])


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, context: ContextDep, model: ModelDep, call: CallDep
) -> JSONResponse | StreamingResponse:
    """Chat completion, rendered with the model's (or adapter's) chat template; tool calls read from the output."""
    served = model.registry.resolve(body.model)
    call.record.model = served.name
    tools = ToolCallPolicy.of(body, model.tool_parsing)
    readers = tools.readers(body.n)
    prompt = await render_chat(
        model.tokenizer, body.messages, tools.rendered_tools(), served.chat_template, model.max_prompt_chars
    )
    keep_special = bool(readers and readers[0].keeps_special_tokens)
    params = generation_params(body, len(prompt), model.max_model_len, tools, keep_special)
    generation = await Generation.start(context, model.engine, served, "chat", [prompt], [params], call)
    count = context.metrics.tool_call_counter(served.name) if readers else None
    shape = ChatShape(body.n, (body.top_logprobs or 0) if body.logprobs else None, readers, count)
    return await respond(request, generation, shape, body.model, body.stream, body.include_usage_in_stream())
