"""Dependencies the routes declare, as `Annotated` aliases: `ContextDep`, `ModelDep`.

The lifespan puts one `AppContext` on `app.state.context`; these read it back typed. They are `async def`
although they never await: FastAPI runs a plain `def` dependency in its thread pool, a round trip per
dependency per request that showed in the API process's profile. `ModelDep` is where a
request is admitted: 503 in the envelope while the model loads or the service drains. Authentication is a
router-level dependency (`routes/__init__.py`), so FastAPI runs it before these: 401 beats 503.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.context import AppContext, LoadedModel
from service.errors import ServiceUnavailable


async def get_context(request: Request) -> AppContext:
    return request.app.state.context


async def get_model(context: Annotated[AppContext, Depends(get_context)]) -> LoadedModel:
    """The loaded model, or a 503 while it is still loading or the service is draining."""
    context.lifecycle.admit()
    if context.model is None:  # admit() already refuses this; the check narrows the type
        raise ServiceUnavailable("The model is still loading; retry shortly.")
    return context.model


ContextDep = Annotated[AppContext, Depends(get_context)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
