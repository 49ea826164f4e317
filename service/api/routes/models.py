"""GET /v1/models and GET /v1/models/{id}: the base model and each adapter (adapters name their parent); one
model's card adds its lineage, the training manifest chain it was made from (`adapters/lineage.py`)."""

from __future__ import annotations

from fastapi import APIRouter

from service.adapters.registry import ServedModel
from service.api.deps import ModelDep
from service.context import LoadedModel

router = APIRouter(tags=["models"])


def model_card(model: LoadedModel, served: ServedModel) -> dict:
    """OpenAI's model object, plus what a client of a fine-tune service needs: parent, root, context length."""
    return {
        "id": served.name,
        "object": "model",
        "created": served.created or model.registry.created,
        "owned_by": "tsumugi",
        "root": served.root,
        "parent": served.parent,
        "max_model_len": model.max_model_len,
    }


@router.get("/models")
async def list_models(model: ModelDep) -> dict:
    """Every name a request may put in `model`."""
    return {"object": "list", "data": [model_card(model, served) for served in model.registry]}


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, model: ModelDep) -> dict:
    """One model, with `lineage` (its manifest, the manifest's SHA-256 and the chain of artifacts it was derived
    from, each link checked by hash; null for a model tsumugi did not make) and `licence` (intended use, each
    input's terms and the obligations that travel with the model; null when none are declared). Unknown: 404."""
    served = model.registry.resolve(model_id)
    lineage = served.lineage.as_response() if served.lineage else None
    return model_card(model, served) | {"lineage": lineage, "licence": served.licence}
