"""HTTP routes, one module per resource; `api_router` is every `/v1` route behind the API key."""

from fastapi import APIRouter, Depends

from service.auth import require_api_key
from service.routes import chat, completions, health, models

api_router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
for _module in (chat, completions, models):
    api_router.include_router(_module.router)

__all__ = ["api_router", "health"]
