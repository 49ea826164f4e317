"""GET /v1/models: the base model and each adapter (adapters name their parent)."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import ModelDep

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(model: ModelDep) -> dict:
    """Every name a request may put in `model`."""
    return {
        "object": "list",
        "data": [
            {
                "id": served.name,
                "object": "model",
                "created": model.registry.created,
                "owned_by": "tsumugi",
                "root": served.root,
                "parent": served.parent,
                "max_model_len": model.max_model_len,
            }
            for served in model.registry
        ],
    }
