"""Dependencies the routes declare, as `Annotated` aliases: `ContextDep`, `ModelDep`, `CallDep`.

The lifespan puts one `AppContext` on `app.state.context`; these read it back typed. They are `async def`
although they never await: FastAPI runs a plain `def` dependency in its thread pool, a round trip per
dependency per request that showed in the API process's profile. `ModelDep` is where a request is first
turned away: 503 in the envelope while the model loads, the service drains or the engine has died.
Authentication happens before all of them, in `middleware.py`: 401 beats every other answer.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request

from service.adapters.catalogue import AdapterCatalogue
from service.api.middleware import record_of
from service.context import AppContext, LoadedModel
from service.errors import InvalidRequest, ServiceUnavailable
from service.pipeline.call import Call

TIMEOUT_HEADER = "x-request-timeout"


async def get_context(request: Request) -> AppContext:
    return request.app.state.context


async def get_model(context: Annotated[AppContext, Depends(get_context)]) -> LoadedModel:
    """The loaded model, or a 503 while it is still loading or the service is draining."""
    context.lifecycle.admit()
    if context.model is None:  # admit() already refuses this; the check narrows the type
        raise ServiceUnavailable("The model is still loading; retry shortly.")
    return context.model


async def get_call(request: Request, context: Annotated[AppContext, Depends(get_context)]) -> Call:
    """The record the middleware started, and the deadline: the server's `--request-timeout`, lowered by an
    `X-Request-Timeout: <seconds>` header (a client or gateway that gives up earlier should not leave work
    running)."""
    timeout = context.settings.request_timeout
    header = request.headers.get(TIMEOUT_HEADER)
    if header is not None:
        try:
            requested = float(header)
        except ValueError:
            requested = math.nan
        if not (requested > 0 and math.isfinite(requested)):
            raise InvalidRequest("X-Request-Timeout: must be a positive number of seconds", param="X-Request-Timeout")
        timeout = min(timeout, requested)
    return Call(record_of(request.scope), timeout)


async def get_adapters(context: Annotated[AppContext, Depends(get_context)]) -> AdapterCatalogue:
    """The adapter catalogue, once the model is up (503 before, and while draining)."""
    await get_model(context)
    if context.adapters is None:  # published with the model; the check narrows the type
        raise ServiceUnavailable("The model is still loading; retry shortly.")
    return context.adapters


ContextDep = Annotated[AppContext, Depends(get_context)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
CallDep = Annotated[Call, Depends(get_call)]
AdaptersDep = Annotated[AdapterCatalogue, Depends(get_adapters)]
