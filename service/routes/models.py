"""GET /v1/models: the base model and each adapter (adapters name their parent)."""

from __future__ import annotations

from fastapi import APIRouter

from service.auth import APIKeyDep
from service.deps import RunnerDep

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
async def list_models(runner: RunnerDep, _: APIKeyDep) -> dict:
    """Every name a request may put in `model`."""
    registry = runner.registry
    return {
        "object": "list",
        "data": [
            {
                "id": model.name,
                "object": "model",
                "created": registry.created,
                "owned_by": "tsumugi",
                "root": model.root,
                "parent": model.parent,
                "max_model_len": runner.max_model_len,
            }
            for model in registry
        ],
    }
