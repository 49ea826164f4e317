"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.deps import CallDep, ContextDep, ModelDep
from service.api.render.chat import CompletionShape, respond
from service.api.schemas.completions import CompletionRequest
from service.pipeline.start import start_completion

router = APIRouter(tags=["completions"])


@router.post("/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, context: ContextDep, model: ModelDep, call: CallDep
) -> JSONResponse | StreamingResponse:
    """Text completion of one prompt or a batch of prompts (text or token ids)."""
    run = await start_completion(body, context, model, call)
    shape = CompletionShape(body.n, body.logprobs, run.echoed_prompts)
    return await respond(request, run.generation, shape, body.model, body.stream, body.include_usage_in_stream())
