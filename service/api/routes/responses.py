"""POST /v1/responses: OpenAI's Responses API, stateless, generated exactly as a chat completion."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.deps import CallDep, ContextDep, ModelDep
from service.api.render.responses import respond
from service.api.schemas.responses import ResponsesRequest
from service.pipeline.start import start_chat

router = APIRouter(tags=["responses"])


@router.post("/responses", response_model=None)
async def create_response(
    body: ResponsesRequest, request: Request, context: ContextDep, model: ModelDep, call: CallDep
) -> JSONResponse | StreamingResponse:
    """A model response to `input` (and `instructions`); nothing is stored, so the whole input comes each time."""
    run = await start_chat(body.chat_request(), "responses", context, model, call)
    return await respond(request, run, body)
