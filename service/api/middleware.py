"""The one pure-ASGI middleware: every HTTP request passes here first and last.

First: it gives the request an id (the client's `X-Request-Id` when usable, so a gateway's id follows the
request into our logs; else a fresh one, echoed on every response), authenticates `/v1` requests (401 before
the body is read, so neither invalid JSON nor a huge body is looked at for an unknown caller), and refuses
bodies over `--max-request-body-bytes` with 413: at once from `Content-Length`, or as soon as a chunked body
grows past the limit, so memory never holds more than the limit.

Last: it settles the final status (499 when the client left before the response was complete, streamed or
not), counts generation requests by status, and writes one JSON access-log line per `/v1` request (id, key
name, model, status, tokens, timings; never prompts or keys), all from the call's outcome, read once here
(`pipeline/call.py`). A bug of ours is answered with a 500 naming the request id and logged once with its
traceback.

Pure ASGI (no BaseHTTPMiddleware) so streamed bodies pass through untouched, and one middleware because its
`send` wrapper runs once per SSE chunk.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.access.tenants import KeyRing
from service.errors import APIError, ClientClosed, PayloadTooLarge, PermissionDenied, Unauthorized, internal_error
from service.metrics import ServiceMetrics
from service.pipeline.call import CallRecord, Outcome

logger = logging.getLogger(__name__)
access_log = logging.getLogger("tsumugi.access")

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/responses": "responses"}
STATUS_CLIENT_CLOSED = ClientClosed.status
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


ADMIN_PREFIX = "/v1/adapters"  # the admin API: admin keys only (`--admin-api-key`), never user keys
ADMIN_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")  # vLLM's names for the same (routes/adapters.py)


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        keyring: KeyRing | None,
        max_body_bytes: int,
        admin_keyring: KeyRing | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.keyring = keyring
        self.admin_keyring = admin_keyring
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = CallRecord(_request_id(scope))
        scope.setdefault("state", {})["record"] = record
        scope["state"]["request_id"] = record.request_id
        header = (b"x-request-id", record.request_id.encode())
        status = STATUS_CLIENT_CLOSED
        complete = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            refusal = self._refusal(scope, record)
            if refusal is not None:
                await refusal.response()(scope, receive, send_with_id)
            else:
                await self.app(scope, self._bounded(receive), send_with_id)
        except Exception as exc:
            # A bug of ours: logged once, with its traceback and the id the client is told; never re-raised
            # (Starlette's outer handler would log it a second time), never blamed on the client.
            logger.error("request %s failed", record.request_id, exc_info=exc)
            if status == STATUS_CLIENT_CLOSED:
                await internal_error(record.request_id).response()(scope, receive, send_with_id)
        finally:
            final = status if complete else STATUS_CLIENT_CLOSED
            outcome = record.outcome()
            endpoint = ENDPOINTS.get(scope["path"])
            if endpoint is not None:
                self.metrics.count(outcome.model, endpoint, final, record.tenant.name)
                self.metrics.count_tokens(record.tenant.name, outcome.num_prompt_tokens, outcome.num_completion_tokens)
            if scope["path"].startswith("/v1/"):
                _log_access(scope, record, outcome, final, time.perf_counter() - started)

    def _refusal(self, scope: Scope, record: CallRecord) -> APIError | None:
        """401 or 413 from the headers alone, before any of the body is read."""
        if not scope["path"].startswith("/v1/"):
            return None
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if scope["path"] in (ADMIN_PREFIX, *ADMIN_PATHS) or scope["path"].startswith(ADMIN_PREFIX + "/"):
            refusal = self._admin_refusal(authorization, record)
            if refusal is not None:
                return refusal
        elif self.keyring is not None:
            try:
                record.tenant = self.keyring.authenticate(authorization)
            except APIError as exc:
                return exc
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return PayloadTooLarge(self.max_body_bytes)
        return None

    def _admin_refusal(self, authorization: str, record: CallRecord) -> APIError | None:
        """Admin routes: an admin key passes; a valid user key gets 403 (valid, but not for this); anything else
        401. `--no-auth` opens the user routes only; without `--admin-api-key` the admin API is closed (403)."""
        refused: APIError | None = None
        if self.admin_keyring is not None:
            try:
                record.tenant = self.admin_keyring.authenticate(authorization)
                return None
            except Unauthorized as exc:
                refused = exc
        user_key = False
        if self.keyring is not None:
            try:
                self.keyring.authenticate(authorization)
                user_key = True
            except Unauthorized as exc:
                refused = refused or exc
        if self.admin_keyring is None and (user_key or self.keyring is None):
            return PermissionDenied("The admin API is disabled: start the server with --admin-api-key.")
        if user_key:
            return PermissionDenied("The admin API needs an admin key (--admin-api-key), not a user key.")
        return refused

    def _bounded(self, receive: Receive) -> Receive:
        """`receive` that raises a 413 once a body (chunked, or longer than its `Content-Length`) passes the
        limit; raised as Starlette's `HTTPException`, the one kind FastAPI lets out of its body reading."""
        limit = self.max_body_bytes
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, PayloadTooLarge(limit).message)
            return message

        return bounded_receive


def _log_access(scope: Scope, record: CallRecord, outcome: Outcome, status: int, duration_s: float) -> None:
    line = {
        "request_id": record.request_id,
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "key": record.tenant.name,
        "model": outcome.model,
        "prompt_tokens": outcome.num_prompt_tokens,
        "completion_tokens": outcome.num_completion_tokens,
        "ttft_ms": None if outcome.ttft_s is None else round(outcome.ttft_s * 1000, 1),
        "duration_ms": round(duration_s * 1000, 1),
    }
    access_log.info(json.dumps(line))


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _CLIENT_ID.fullmatch(value):
            return value.decode()
    return uuid.uuid4().hex


def record_of(scope: Scope) -> CallRecord:
    """This request's record (made here for requests that did not pass the middleware, such as in unit tests)."""
    state = scope.setdefault("state", {})
    if "record" not in state:
        state["record"] = CallRecord(state.get("request_id") or uuid.uuid4().hex)
    return state["record"]
