"""`--resolve-adapters-on-request`: vLLM's filesystem resolver (`VLLM_LORA_RESOLVER_CACHE_DIR` with the
`lora_filesystem_resolver` plugin) in tsumugi's terms.

A request whose `model` names nothing served, but names a directory `<--adapter-dir>/<model>`, loads that
directory as the adapter `<model>` before it resolves, and is then served by it. The load goes through the
catalogue as the admin API's does (the same checks, a version, leases; `GET /v1/adapters` lists it), so there
is one loading path. Where vLLM's resolver differs, this one is stricter:

* only a valid adapter name is looked up (`checks.ADAPTER_NAME`: no `/`, no `..`); anything else, like a name
  with no directory, stays unknown: 404 `model_not_found`, as without the flag;
* a key limited to some models (`models:` in the keys file) never loads a name it may not use: it gets the
  same answer (404, or 403 once served) it would get without the flag;
* a directory found but refused (our checks, or the engine's own) is a 400 naming why on `model`, where vLLM
  says only that it "was found but could not be loaded";
* requests naming the same new adapter at once load it once: the catalogue's lock orders them, and the later
  ones find it served.

Unlike `--watch-adapter-dir`, no `tsumugi-ready` marker is needed (vLLM's layout has none): write a directory
completely before a request names it. A loaded adapter stays until it is unloaded (`DELETE /v1/adapters/{name}`,
`POST /v1/unload_lora_adapter`); vLLM's own memory limit (`--max-cpu-loras`) still decides what stays in memory.
"""

from __future__ import annotations

from service.access.tenants import Tenant
from service.adapters.catalogue import AdapterCatalogue
from service.adapters.checks import ADAPTER_NAME
from service.config import Settings
from service.errors import AdapterExists, AdapterRejected


async def load_on_request(catalogue: AdapterCatalogue | None, settings: Settings, tenant: Tenant, name: str) -> None:
    """Load `name` from the adapter directory if the flag is on, nothing serves it, the key may use it and its
    directory exists; otherwise do nothing and let resolving the name answer as usual."""
    root = settings.adapter_dir
    if not settings.resolve_adapters_on_request or catalogue is None or root is None:
        return
    if catalogue.registry.serves(name) or not ADAPTER_NAME.fullmatch(name) or not tenant.may_use(name):
        return
    if not (root / name).is_dir():
        return
    try:
        await catalogue.add(name, name)
    except AdapterExists:
        return  # a request before this one loaded it meanwhile
    except AdapterRejected as exc:
        raise AdapterRejected(
            f"The adapter directory '{name}' was found but cannot be served: {exc.message}", param="model"
        ) from None
