"""Dependencies the routes declare; the lifespan puts the long-lived objects on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.runner import RequestRunner


def get_runner(request: Request) -> RequestRunner:
    """The runner, or a 503 in the envelope while the model is still loading."""
    state = request.app.state.service_state
    runner = getattr(request.app.state, "runner", None)
    state.admit()
    return runner


RunnerDep = Annotated[RequestRunner, Depends(get_runner)]
