"""Errors as values: a type, a message for the user, a status. The edge turns them into OpenAI's envelope.

Every failure a client can cause becomes an `APIError` with the right status; FastAPI's own validation
errors (422 by default) are mapped here too. Anything unexpected (a bug of ours) is answered by
`middleware.RequestMiddleware` with `internal_error`, so no request ever sees a bare 500 page or a body that
the `openai` client cannot parse.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error with everything the OpenAI envelope needs."""

    status: int = HTTPStatus.BAD_REQUEST
    type: str = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == HTTPStatus.UNAUTHORIZED else None
        return JSONResponse(self.envelope(), status_code=self.status, headers=headers)


class InvalidRequest(APIError):
    status = HTTPStatus.BAD_REQUEST


class ModelNotFound(APIError):
    status = HTTPStatus.NOT_FOUND

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model", code="model_not_found")


class Unauthorized(APIError):
    status = HTTPStatus.UNAUTHORIZED
    type = "authentication_error"


class ServiceUnavailable(APIError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = "service_unavailable"


class Overloaded(APIError):
    """The engine's queue cap (`--max-num-queued-requests`) is reached: retry here later or elsewhere."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = "overloaded_error"


class EngineFailure(APIError):
    """The engine failed, or our own code did: never the client's fault, so never a 4xx."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    type = "internal_error"


def reported_failure(exc: EngineFailure, request_id: str) -> EngineFailure:
    """Log an engine failure once, with its traceback, and name the request id in what the client sees."""
    logger.error("request %s failed", request_id, exc_info=exc)
    return EngineFailure(f"{exc.message} (request id {request_id})")


def internal_error(request_id: str) -> EngineFailure:
    """What a client sees of a bug of ours: a 500 naming the request id that the logged traceback carries."""
    return EngineFailure(f"The server had an error while processing your request (request id {request_id}).")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "Invalid request body.")
    return (f"{param}: {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    """Route every error path through the envelope."""

    @app.exception_handler(APIError)
    async def handle_api_error(request: Request, exc: APIError) -> JSONResponse:
        if isinstance(exc, EngineFailure):
            return reported_failure(exc, request_id_of(request.scope)).response()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def handle_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return InvalidRequest(message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def handle_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(str(exc.detail))
        error.status = exc.status_code
        error.type = "not_found_error" if exc.status_code == HTTPStatus.NOT_FOUND else "invalid_request_error"
        return error.response()


def request_id_of(scope: dict) -> str:
    """The id `RequestMiddleware` gave this request (one is made here for paths that bypass it)."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = uuid.uuid4().hex
    return state["request_id"]
