"""The admin API for adapters: load, replace and retire fine-tunes while the service runs (`adapters/catalogue.py`).

Admin keys only (`--admin-api-key`; a user key gets 403, checked in `api/middleware.py`), and only adapters under
`--adapter-dir`. A refused adapter is a 400 naming why (its path, rank, format, or the engine's own reason);
the engine and every served model are untouched by a refusal.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from service.api.deps import AdaptersDep

router = APIRouter(tags=["adapters"])


class AdapterLoad(BaseModel):
    """`POST /v1/adapters`: a new adapter name and its directory under `--adapter-dir`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str


class AdapterReplace(BaseModel):
    """`PUT /v1/adapters/{name}`: the directory of the name's new version."""

    model_config = ConfigDict(extra="forbid")

    path: str


@router.get("/adapters")
async def list_adapters(adapters: AdaptersDep) -> dict:
    """Every adapter name: state (loading, ready, failed with a reason), version, path, loaded at, requests."""
    return {"object": "list", "data": adapters.states()}


@router.post("/adapters", status_code=201)
async def load_adapter(body: AdapterLoad, adapters: AdaptersDep) -> dict:
    """Load a new adapter; requests may name it as soon as this returns. 409 if the name is served."""
    return (await adapters.add(body.name, body.path)).as_json(0)


@router.put("/adapters/{name}")
async def replace_adapter(name: str, body: AdapterReplace, adapters: AdaptersDep) -> dict:
    """Load a new version and switch the name to it; running requests finish on the version they started on."""
    state = await adapters.replace(name, body.path)
    return state.as_json(adapters.requests_served(name))


@router.delete("/adapters/{name}")
async def delete_adapter(name: str, adapters: AdaptersDep) -> dict:
    """Stop serving the name (new requests: 404); running ones finish, then the version is unloaded."""
    await adapters.delete(name)
    return {"id": name, "object": "adapter", "deleted": True}
