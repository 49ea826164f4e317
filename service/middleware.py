"""The one pure-ASGI middleware: gives each request an id, answers our own bugs with a 500 naming that id,
and counts generation requests by final status.

Pure ASGI (no BaseHTTPMiddleware) so streamed bodies pass through untouched, and one middleware rather than
two because its `send` wrapper runs once per SSE chunk. The id is the client's `X-Request-Id` when it sends a
usable one (so a gateway's id follows the request into our logs), else a fresh one; it is echoed on every
response. A request that ends before its response starts (the client went away) counts as 499.
"""

from __future__ import annotations

import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import internal_error
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
STATUS_CLIENT_CLOSED = 499
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RequestMiddleware:
    """Request ids for every HTTP request; counts by model, endpoint and status for generation requests.

    The route records the resolved model name in `request.state.model_label`; requests that never got that
    far count as "unknown", which keeps label cardinality bounded whatever clients put in `model`.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        endpoint = ENDPOINTS.get(scope["path"])
        header = (b"x-request-id", request_id.encode())
        status = STATUS_CLIENT_CLOSED

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # A bug of ours: logged once, with its traceback and the id the client is told; never re-raised
            # (Starlette's outer handler would log it a second time), never blamed on the client.
            logger.error("request %s failed", request_id, exc_info=exc)
            if status == STATUS_CLIENT_CLOSED:
                await internal_error(request_id).response()(scope, receive, send_with_id)
        finally:
            if endpoint is not None:
                self.metrics.count(scope["state"].get("model_label", "unknown"), endpoint, status)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _CLIENT_ID.fullmatch(value):
            return value.decode()
    return uuid.uuid4().hex
