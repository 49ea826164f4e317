"""What the renderers share: the compact JSON encoder, and what an exception raised mid-stream becomes.

Once a stream has started, its status (200) is sent, so an error can only be told in the stream itself: chat
and completions end with an `error` event in OpenAI's envelope, the Responses API with its `error` event.
Which error is told is decided here, once for both: the client's or the engine's own `APIError` as it is; an
engine failure logged with its traceback and named by request id; anything else is a bug of ours, logged and
reported as a 500-class error, never as the client's fault.
"""

from __future__ import annotations

import json
import logging

from service.errors import APIError, EngineFailure, internal_error, reported_failure

logger = logging.getLogger(__name__)
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def mid_stream_error(exc: Exception, request_id: str) -> APIError:
    """The error to tell a client whose stream `exc` ended."""
    if isinstance(exc, EngineFailure):
        return reported_failure(exc, request_id)
    if isinstance(exc, APIError):
        return exc
    logger.error("request %s failed mid-stream", request_id, exc_info=exc)
    return internal_error(request_id)
