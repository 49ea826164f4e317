"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.deps import CallDep, ContextDep, ModelDep
from service.api.render.chat import CompletionShape, respond
from service.api.schemas.chat import CompletionRequest
from service.pipeline.generation import Generation
from service.pipeline.prompts import encode_prompts
from service.pipeline.sampling import generation_params

router = APIRouter(tags=["completions"])


@router.post("/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, context: ContextDep, model: ModelDep, call: CallDep
) -> JSONResponse | StreamingResponse:
    """Text completion of one prompt or a batch of prompts (text or token ids)."""
    served = model.registry.resolve(body.model)
    call.record.model = served.name
    prompts = await encode_prompts(model.tokenizer, body.prompts(), model.vocab_size, model.max_prompt_chars)
    params = [generation_params(body, len(ids), model.max_model_len) for ids in prompts]
    generation = await Generation.start(context, model.engine, served, "completions", prompts, params, call)
    echoed = [p if isinstance(p, str) else model.tokenizer.decode(p) for p in body.prompts()] if body.echo else None
    shape = CompletionShape(body.n, body.logprobs, echoed)
    return await respond(request, generation, shape, body.model, body.stream, body.include_usage_in_stream())
