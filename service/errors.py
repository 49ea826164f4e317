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
    retry_after: int | None = None  # seconds, sent as `Retry-After` (the openai SDK honours it)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {}
        if self.status == HTTPStatus.UNAUTHORIZED:
            headers["WWW-Authenticate"] = "Bearer"
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return JSONResponse(self.envelope(), status_code=self.status, headers=headers)


class InvalidRequest(APIError):
    status = HTTPStatus.BAD_REQUEST


class AdapterRejected(InvalidRequest):
    """An adapter that cannot be served, with the reason; the engine keeps serving what it served."""


class AdapterExists(APIError):
    status = HTTPStatus.CONFLICT

    def __init__(self, name: str) -> None:
        super().__init__(
            f"An adapter named '{name}' is already served; PUT /v1/adapters/{name} replaces it.",
            param="name",
            code="adapter_exists",
        )


class ModelNotFound(APIError):
    status = HTTPStatus.NOT_FOUND

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model", code="model_not_found")


class Unauthorized(APIError):
    status = HTTPStatus.UNAUTHORIZED
    type = "authentication_error"


class PermissionDenied(APIError):
    """The key is valid but may not use this model or adapter."""

    status = HTTPStatus.FORBIDDEN
    type = "permission_error"


class PayloadTooLarge(APIError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is larger than this server accepts ({limit} bytes).", code="request_too_large"
        )


class RateLimited(APIError):
    """Admission refused for now (the server's or the key's limits): retry after `retry_after` seconds."""

    status = HTTPStatus.TOO_MANY_REQUESTS
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int, code: str) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, retry_after)


class DeadlineExceeded(APIError):
    """The request's deadline passed while it queued or generated; the engine request was aborted."""

    status = HTTPStatus.GATEWAY_TIMEOUT
    type = "timeout_error"

    def __init__(self, timeout: float) -> None:
        super().__init__(f"The request did not finish within its deadline ({timeout:g} s).", code="timeout")


class ClientClosed(APIError):
    """The client went away before the response was complete (nginx's 499); nobody reads this answer."""

    status = 499
    type = "client_closed"


class ServiceUnavailable(APIError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = "service_unavailable"


class Overloaded(APIError):
    """The engine refused the request for capacity (its own admission): retry here later or elsewhere."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = "overloaded_error"
    retry_after = 1


class EngineFailure(APIError):
    """The engine failed while running a request: never the client's fault, so never a 4xx."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    type = "internal_error"


class InternalError(APIError):
    """A bug of ours, as the client sees it: a 500 naming the request id whose traceback the log carries."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    type = "internal_error"


class StartupError(Exception):
    """A configuration the service cannot start with (a flag, a keys file, a model or adapter directory): the
    operator's to fix, so `python -m service` prints it as one line and exits 2. Anything else that stops the
    start is a bug of ours and keeps its traceback (exit 1)."""


class ArtifactError(StartupError):
    """A model or adapter directory whose files cannot be served (unreadable manifest, licence or template,
    missing weights, refused by the engine), with the reason: stops the start when it is a start-up adapter,
    and is an `AdapterRejected` (400) when the admin API or the watched directory brings it at runtime."""


def reported_failure(exc: EngineFailure, request_id: str) -> EngineFailure:
    """Log an engine failure once, with its traceback, and name the request id in what the client sees."""
    logger.error("request %s failed", request_id, exc_info=exc)
    return EngineFailure(f"{exc.message} (request id {request_id})")


def internal_error(request_id: str) -> InternalError:
    """What a client sees of a bug of ours: a 500 naming the request id that the logged traceback carries."""
    return InternalError(f"The server had an error while processing your request (request id {request_id}).")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    # Of a union's errors (`input` is a string or a list of items), the one that is not "wrong type" is in the
    # branch the client meant: `input[0].arguments: must be a JSON object`, not `input: should be a string`.
    specific = [error for error in errors if not str(error.get("type", "")).endswith("_type")]
    first = (specific or errors or [{}])[0]
    if first.get("type") == "json_invalid":
        position = first.get("loc", ("body", "?"))[-1]
        detail = first.get("ctx", {}).get("error", "JSON decode error")
        return f"The request body is not valid JSON: {detail} (at character {position}).", None
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in ("model_attributes_type", "dict_type"):
        return "The request body must be a JSON object (sent as Content-Type: application/json).", None
    param = _param_path(first.get("loc", ()))
    message = first.get("msg", "Invalid request body.").removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


_UNION_TAGS = {"str", "int", "float", "bool", "none", "dict", "list", "literal"}


def _param_path(loc: tuple) -> str | None:
    """pydantic's error location as OpenAI writes a `param`: `messages[0].content`, without pydantic's union
    branch tags (`str`, `list[TextPart]`, `function-after[...]`, our `item:message`)."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif not any(mark in part for mark in "[(:") and part not in _UNION_TAGS:
            path += f".{part}" if path else part
    return path or None


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
        # Starlette's own (404 for an unknown path, 405) and the body limit's 413 raised while reading.
        error = APIError(str(exc.detail), code="request_too_large" if exc.status_code == 413 else None)
        error.status = exc.status_code
        error.type = "not_found_error" if exc.status_code == HTTPStatus.NOT_FOUND else "invalid_request_error"
        return error.response()


def request_id_of(scope: dict) -> str:
    """The id `RequestMiddleware` gave this request (one is made here for paths that bypass it)."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = uuid.uuid4().hex
    return state["request_id"]
