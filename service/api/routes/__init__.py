"""HTTP routes, one module per resource; `api_router` is every `/v1` route, and `openapi_document` is what
`/openapi.json` says about them.

Authentication itself happens in `middleware.py`, before the body is read; the router declares the bearer
scheme (`HTTPBearer` without `auto_error`, so it documents and never refuses) so that the document says how to
authenticate, and lists the statuses these routes really answer, in OpenAI's error envelope.
"""

from typing import Any

from fastapi import APIRouter, FastAPI, Security
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPBearer
from pydantic import BaseModel

from service.api.routes import adapters, chat, completions, health, models, responses


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    """OpenAI's error envelope, the body of every 4xx and 5xx."""

    error: ErrorBody


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorEnvelope, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Invalid request: a field is missing, malformed or out of range (`param` names it)."),
    401: _error("Missing or invalid API key."),
    403: _error("The API key may not use this model or adapter, or this route (admin API: admin keys only)."),
    404: _error("The model or adapter does not exist."),
    409: _error("An adapter of that name is already served (admin API; replace it with PUT)."),
    413: _error("The request body is larger than the server accepts."),
    429: _error("Admission control: the server or the key is at its limit; see `Retry-After`."),
    500: _error("A server error; the message names the request id to report."),
    503: _error("The model is loading, the server is draining, or the engine died; see `Retry-After`."),
    504: _error("The request's deadline passed (`--request-timeout`, `X-Request-Timeout`)."),
}

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
api_router = APIRouter(prefix="/v1", dependencies=[Security(bearer)], responses=ERROR_RESPONSES)
for _module in (chat, completions, responses, models, adapters):
    api_router.include_router(_module.router)


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document without the 422 it adds to every route with a body: validation errors are 400 here."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path in document.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            document.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = document
    return app.openapi_schema


__all__ = ["api_router", "health", "openapi_document"]
