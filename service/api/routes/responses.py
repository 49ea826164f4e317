"""POST /v1/responses: OpenAI's Responses API, stateless, generated exactly as a chat completion."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.deps import CallDep, ContextDep, ModelDep
from service.api.render.responses import respond
from service.api.schemas.responses import ResponsesRequest
from service.pipeline.generation import Generation
from service.pipeline.prompts import render_chat
from service.pipeline.sampling import generation_params
from service.pipeline.tools import ToolCallPolicy

router = APIRouter(tags=["responses"])


@router.post("/responses", response_model=None)
async def create_response(
    body: ResponsesRequest, request: Request, context: ContextDep, model: ModelDep, call: CallDep
) -> JSONResponse | StreamingResponse:
    """A model response to `input` (and `instructions`); nothing is stored, so the whole input comes each time."""
    chat = body.chat_request()
    served = model.registry.resolve(chat.model)
    call.record.model = served.name
    tools = ToolCallPolicy.of(chat, model.tool_parsing)
    readers = tools.readers(1)
    prompt = await render_chat(
        model.tokenizer, chat.messages, tools.rendered_tools(), served.chat_template, model.max_prompt_chars
    )
    keep_special = bool(readers and readers[0].keeps_special_tokens)
    params = generation_params(chat, len(prompt), model.max_model_len, tools, keep_special)
    generation = await Generation.start(context, model.engine, served, "responses", [prompt], [params], call)
    count = context.metrics.tool_call_counter(served.name)
    return await respond(request, generation, body, readers[0] if readers else None, count)
