"""The adapter catalogue: adapters added, replaced and retired while the service runs (the admin API).

What vLLM 0.32 does and does not do decides the rules here (read in its `lora/` and `v1/` sources):

* it keeps no reference count on adapters: an adapter removed while a request still uses it is silently loaded
  again from its path at the next step. So every request holds a **lease** on the adapter version it resolved,
  and a replaced or deleted version is removed from the engine only when its last lease ends;
* it hashes prefix-cache blocks by adapter name and path and batches adapters by name, so a replacement that
  kept the old name could reuse the old version's cached prefixes (vLLM #42125) or collide with it inside one
  batch. Every loaded **version** gets its own engine name (`name@vN`) and engine id, never reused;
* `add_lora` validates an adapter before it evicts anything; a load that fails later, inside a batch, ends the
  engine. So a version is loaded (and refused, with the engine's reason) before any request can name it;
* it keeps `--max-cpu-loras` adapters in memory and reads the others from disk when a request needs them, and
  says which it holds only when asked (`list_loras`, a call the engine core answers between its steps). So
  adapter requests ask as they are sent, sharing one question: a request sent while an answer is awaited
  takes that answer instead of asking again, so under load the engine is asked about once a step, not once a
  request (each question waits in the queue the requests themselves go through). A request whose
  version is not in the answer counts as a cold load (its time to first token is the first-request load
  time), and a served version seen in memory before and out of it now counts as an eviction.

Every admin change holds one lock: calls for a name are serialised, and the name is switched to the new
version in one step (`ModelRegistry.publish`), so requests that resolved the old version finish on it and later
ones get the new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from service.adapters.checks import adapter_directory, check_base, check_name, read_adapter
from service.adapters.lineage import read_licence, read_lineage
from service.adapters.registry import ModelRegistry, ServedModel, read_chat_template
from service.engine.types import AdapterHandle, EngineClient
from service.errors import AdapterExists, AdapterRejected, APIError, ArtifactError, ModelNotFound, PermissionDenied
from service.metrics import ServiceMetrics
from tsumugi.model_identity import weights_sha256

logger = logging.getLogger(__name__)
admin_log = logging.getLogger("tsumugi.admin")
T = TypeVar("T")


@dataclass(slots=True)
class AdapterState:
    """What `GET /v1/adapters` says about one name."""

    name: str
    state: Literal["loading", "ready", "failed"]
    path: str | None = None
    version: int = 0
    loaded_at: int | None = None
    load_seconds: float | None = None
    reason: str | None = None  # why the last load failed

    def as_json(self, requests: int) -> dict:
        """The admin API's view; `requests`: requests this name has served (all versions)."""
        return {
            "id": self.name,
            "object": "adapter",
            "state": self.state,
            "path": self.path,
            "version": self.version,
            "loaded_at": self.loaded_at,
            "load_seconds": self.load_seconds,
            "reason": self.reason,
            "requests": requests,
        }


class AdapterCatalogue:
    """Adds, replaces and retires adapters; leases keep a version loaded while requests use it."""

    def __init__(
        self, registry: ModelRegistry, engine: EngineClient, metrics: ServiceMetrics, root: Path | None, max_rank: int
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.metrics = metrics
        self.root = root
        self.max_rank = max_rank
        self._lock = asyncio.Lock()
        self._leases: Counter[int] = Counter()
        self._retired: dict[int, AdapterHandle] = {}  # replaced or deleted versions still leased
        self._states: dict[str, AdapterState] = {
            served.name: AdapterState(served.name, "ready", served.root, version=1, loaded_at=registry.created)
            for served in registry
            if served.adapter is not None
        }
        for name in self._states:
            metrics.adapter_ready.labels(name).set(1)
        self._versions: Counter[str] = Counter({name: 1 for name in self._states})
        self._requests: Counter[str] = Counter()
        self._tasks: set[asyncio.Task] = set()
        self._base_sha256: str | None = None  # "" once computed for a base without local weights
        self._resident: set[int] = set()  # the engine ids in memory when last asked
        self._probe: asyncio.Task[set[int] | None] | None = None  # the question in flight, shared by requests

    # ---- requests ---------------------------------------------------------------------------------------------
    def lease(self, served: ServedModel) -> Callable[[float | None], None]:
        """Hold `served`'s adapter version until the returned release is called (once the engine stream is
        closed, with the request's time to first token). The base model needs no lease."""
        handle = served.adapter
        if handle is None:
            return _nothing
        self._leases[handle.lora_id] += 1
        self._requests[served.name] += 1
        if self._probe is None or self._probe.done():
            self._probe = self._spawn(self._resident_ids())
        probe = self._probe

        def release(ttft_s: float | None) -> None:
            self._leases[handle.lora_id] -= 1
            if self._leases[handle.lora_id] <= 0:
                del self._leases[handle.lora_id]
                if handle.lora_id in self._retired:
                    self._spawn(self._unload(self._retired.pop(handle.lora_id)))
            resident = probe.result() if probe.done() else None
            if resident is not None and handle.lora_id not in resident:
                self.metrics.adapter_cold_loads.labels(served.name).inc()
                if ttft_s is not None:
                    self.metrics.adapter_cold_start.observe(ttft_s)

        return release

    async def _resident_ids(self) -> set[int] | None:
        """The engine ids the engine holds in memory now (None: it did not say); counts the evictions seen
        since it was last asked."""
        try:
            resident = await self.engine.resident_adapter_ids()
        except Exception:  # the engine is stopping or dead; the request itself reports that
            return None
        served = {s.adapter.lora_id for s in self.registry if s.adapter is not None} | self._retired.keys()
        self.metrics.adapter_evictions.inc(len((self._resident - resident) & served))
        self.metrics.adapters_in_memory.set(len(resident & served))
        self._resident = resident
        return resident

    # ---- admin ------------------------------------------------------------------------------------------------
    def serves(self, name: str) -> bool:
        """Whether a version of `name` is loaded and served now."""
        state = self._states.get(name)
        return state is not None and state.state == "ready"

    def requests_served(self, name: str) -> int:
        return self._requests[name]

    def states(self) -> list[dict]:
        return [state.as_json(self._requests[name]) for name, state in self._states.items()]

    async def add(self, name: object, path: object) -> AdapterState:
        """Load a new adapter name (409 if the name is served; use `replace`)."""
        async with self._lock:
            name = check_name(name, self.registry.base.name)
            if name in self._states and self._states[name].state != "failed":
                raise AdapterExists(name)
            return await self._load(name, path, action="add")

    async def replace(self, name: str, path: object) -> AdapterState:
        """Load a new version of a served name, switch the name to it, retire the old version."""
        async with self._lock:
            if name not in self._states or self._states[name].state == "failed":
                raise ModelNotFound(name)
            return await self._load(name, path, action="replace")

    async def delete(self, name: str) -> None:
        """Stop serving a name: new requests get 404, running ones finish on their version."""
        async with self._lock:
            if name not in self._states:
                raise ModelNotFound(name)
            state = self._states.pop(name)
            self._requests.pop(name, None)
            if state.state == "ready":
                self._retire(self.registry.withdraw(name).adapter)
                self.metrics.adapter_retired(name)
            _log_action("delete", name, state.version, state.path, "ok")

    async def _load(self, name: str, path: object, action: str) -> AdapterState:
        if self.root is None:
            raise PermissionDenied("Adapters can be loaded at runtime only when the server runs with --adapter-dir.")
        version = self._versions[name] + 1
        previous = self._states.get(name)
        # "loading" while the engine loads the version; the previous version, if any, serves meanwhile
        self._states[name] = AdapterState(name, "loading", str(path), version)
        started = time.perf_counter()
        stage = "check"
        try:
            served = await self._checked(name, path, version)
            stage = "engine"
            await self.engine.add_adapter(served.adapter)
        except APIError as exc:
            self.metrics.adapter_load_failures.labels(stage).inc()
            _log_action(action, name, version, str(path), f"refused: {exc.message}")
            if previous is not None and previous.state == "ready":
                self._states[name] = previous  # a failed replacement leaves the served version serving
            else:
                self._states[name] = AdapterState(name, "failed", str(path), version, reason=exc.message)
            raise
        seconds = time.perf_counter() - started
        self._versions[name] = version
        replaced = self.registry.publish(served)
        if replaced is not None and replaced.adapter is not None:
            self._retire(replaced.adapter)
        state = AdapterState(name, "ready", served.root, version, int(time.time()), round(seconds, 3))
        self._states[name] = state
        self.metrics.adapter_loaded(name, seconds)
        _log_action(action, name, version, str(served.root), "ok", seconds)
        return state

    async def _checked(self, name: str, path: object, version: int) -> ServedModel:
        """Everything readable from the directory, checked before the engine sees it."""
        directory = adapter_directory(self.root, path)
        try:
            facts = read_adapter(directory, self.max_rank)
            lineage = read_lineage(directory)
            licence = read_licence(directory, lineage)
            template = read_chat_template(directory)
        except (ArtifactError, OSError) as exc:  # an unreadable manifest, licence file or template
            raise AdapterRejected(str(exc), param="path") from None
        if facts.base_weights_sha256:
            check_base(facts, await self._base_weights_sha256())
        handle = AdapterHandle(f"{name}@v{version}", self.registry.allocate_lora_id(), str(directory))
        base = self.registry.base.name
        return ServedModel(name, str(directory), template, handle, base, lineage, licence, int(time.time()))

    async def _base_weights_sha256(self) -> str | None:
        """The served base model's weight hash (as training records it), computed once, off the event loop."""
        if self._base_sha256 is None:
            self._base_sha256 = await asyncio.to_thread(weights_sha256, Path(self.registry.base.root)) or ""
        return self._base_sha256 or None

    def _retire(self, handle: AdapterHandle) -> None:
        """Unload a version now if no request holds it, else when its last lease ends."""
        if self._leases[handle.lora_id] > 0:
            self._retired[handle.lora_id] = handle
        else:
            self._spawn(self._unload(handle))

    async def _unload(self, handle: AdapterHandle) -> None:
        try:
            await self.engine.remove_adapter(handle)
        except Exception as exc:  # the engine may be shutting down; the version is unreachable either way
            logger.warning("removing adapter version %s from the engine failed: %s", handle.name, exc)

    def _spawn(self, work: Coroutine[None, None, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # held: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        return task

    async def settled(self) -> None:
        """Wait for pending unloads (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _nothing(ttft_s: float | None) -> None:
    return None


def _log_action(action: str, name: str, version: int, path: str | None, outcome: str, seconds: float = 0.0) -> None:
    """One structured line per admin action."""
    line = {"action": action, "adapter": name, "version": version, "path": path, "outcome": outcome}
    if seconds:
        line["load_seconds"] = round(seconds, 3)
    admin_log.info(json.dumps(line, ensure_ascii=False))
