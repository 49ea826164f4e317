"""The admin API for adapters: load, replace and retire fine-tunes while the service runs (`adapters/catalogue.py`).

Admin keys only (`--admin-api-key`; a user key gets 403, checked in `api/middleware.py`), and only adapters under
`--adapter-dir`. A refused adapter is a 400 naming why (its path, rank, format, or the engine's own reason);
the engine and every served model are untouched by a refusal.

Two routes speak vLLM's runtime-adapter API (`POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`; bodies
in `api/schemas/lora_adapters.py`) for the controllers written against `vllm serve`: the same catalogue calls
as ours, with vLLM's answers: 200 and a line of text on success, 400 for a name already served unless
`load_inplace` (then a new version, as PUT), 404 for unloading an unknown name; `param` names vLLM's field.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from service.api.deps import AdaptersDep
from service.api.schemas.lora_adapters import LoadLoRAAdapter, UnloadLoRAAdapter
from service.errors import AdapterExists, AdapterRejected, APIError, InvalidRequest, ModelNotFound

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


VLLM_PARAMS = {"name": "lora_name", "path": "lora_path"}  # our catalogue's field -> vLLM's


class LoRAAdapterNotFound(APIError):
    """vLLM's 404 for unloading a name it does not serve."""

    status = HTTPStatus.NOT_FOUND

    def __init__(self, name: str) -> None:
        super().__init__(f"The lora adapter '{name}' cannot be found.", param="lora_name", code="model_not_found")


@router.post("/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(body: LoadLoRAAdapter, adapters: AdaptersDep) -> str:
    """vLLM's load: a new name, or with `load_inplace` a new version of a served one."""
    name = body.lora_name
    try:
        if body.load_inplace and adapters.serves(name):
            await adapters.replace(name, body.lora_path)
        else:
            await adapters.add(name, body.lora_path)
    except AdapterExists:
        raise InvalidRequest(
            f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, set "
            "'load_inplace' to True.",
            param="lora_name",
        ) from None
    except AdapterRejected as exc:
        raise AdapterRejected(exc.message, param=VLLM_PARAMS.get(exc.param or "", exc.param)) from None
    return f"Success: LoRA adapter '{name}' added successfully."


@router.post("/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadLoRAAdapter, adapters: AdaptersDep) -> str:
    """vLLM's unload: as DELETE, running requests finish on their version."""
    try:
        await adapters.delete(body.lora_name)
    except ModelNotFound:
        raise LoRAAdapterNotFound(body.lora_name) from None
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."
