"""Which models a request may name: the base model and each adapter, with the chat template to render it.

An adapter directory written by tsumugi's training module carries the prompt format it was trained with as
its chat template (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`). A fine-tune only
answers well in the format it learned, so chat requests for that adapter are rendered with that template,
not the base model's. Adapters share the base model's tokenizer (a LoRA cannot change the vocabulary).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from service.adapters.lineage import LICENCE_FILE, Lineage, read_licence, read_lineage
from service.config import LoRAModule
from service.engine.types import NULL_ADAPTER_NAME, AdapterHandle
from service.errors import ArtifactError, ModelNotFound


class AdapterError(ArtifactError):
    """An adapter directory that cannot be served; raised at start-up, before the engine loads."""


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One name a client can put in `model`."""

    name: str
    root: str
    chat_template: str | None
    adapter: AdapterHandle | None = None
    parent: str | None = None
    lineage: Lineage | None = None  # from the directory's training manifest, when tsumugi made it
    licence: dict | None = None  # the manifest's licence record, or the directory's declared terms
    created: int | None = None  # when a runtime adapter version was loaded (None: with the service)


def read_chat_template(directory: Path) -> str | None:
    """The chat template saved with a model or adapter directory, if any."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def check_adapter_dir(module: LoRAModule) -> None:
    if not (module.path / "adapter_config.json").is_file():
        raise AdapterError(f"adapter '{module.name}': {module.path}/adapter_config.json not found")
    if not (module.path / "adapter_model.safetensors").is_file():
        raise AdapterError(f"adapter '{module.name}': {module.path}/adapter_model.safetensors not found")


class ModelRegistry:
    """Resolves the `model` field of a request to the base model or one adapter."""

    def __init__(self, base: ServedModel, adapters: list[ServedModel]) -> None:
        self.base = base
        self.created = int(time.time())
        self._by_name = {base.name: base} | {adapter.name: adapter for adapter in adapters}
        # Engine ids: the start-up adapters' (1..N), the null adapter's (N+1), then one per runtime version,
        # never reused (vLLM keys its loaded adapters by id).
        self.null_adapter_id = len(adapters) + 1
        self._next_lora_id = len(adapters) + 2

    def allocate_lora_id(self) -> int:
        lora_id, self._next_lora_id = self._next_lora_id, self._next_lora_id + 1
        return lora_id

    def publish(self, served: ServedModel) -> ServedModel | None:
        """Serve `served` under its name from now on; returns the model it replaces (None for a new name).
        One dict assignment: a request resolves either the old version or the new one, never neither."""
        previous = self._by_name.get(served.name)
        self._by_name[served.name] = served
        return previous

    def withdraw(self, name: str) -> ServedModel:
        """Stop serving an adapter by name (requests that already resolved it keep their version)."""
        served = self.resolve(name)
        if served.adapter is None:
            raise RuntimeError("the base model cannot be withdrawn")  # the catalogue never asks: a bug
        del self._by_name[name]
        return served

    @classmethod
    def from_modules(
        cls,
        base_name: str,
        base_path: str,
        modules: list[LoRAModule],
        base_template: str | None = None,
        require_licence: bool = False,
    ) -> ModelRegistry:
        """Check every adapter directory and give each a stable engine id (1-based, in flag order).
        `base_template` (`--chat-template`) replaces the base model's own; adapters keep theirs. With
        `require_licence`, a model or adapter without licence terms is an error (`--require-licence-metadata`)."""
        names = [m.name for m in modules]
        duplicates = {n for n in names if names.count(n) > 1} | ({base_name} & set(names))
        if duplicates or NULL_ADAPTER_NAME in names:
            raise AdapterError(f"adapter names must be unique and differ from the base model: {duplicates}")
        adapters = []
        for lora_id, module in enumerate(modules, start=1):
            check_adapter_dir(module)
            handle = AdapterHandle(module.name, lora_id, str(module.path.resolve()))
            template, lineage = read_chat_template(module.path), read_lineage(module.path)
            licence = read_licence(module.path, lineage)
            adapters.append(ServedModel(module.name, str(module.path), template, handle, base_name, lineage, licence))
        lineage = read_lineage(base_path)
        base = ServedModel(
            base_name, base_path, base_template, lineage=lineage, licence=read_licence(base_path, lineage)
        )
        unlicensed = [served.name for served in (base, *adapters) if served.licence is None]
        if require_licence and unlicensed:
            raise AdapterError(
                f"--require-licence-metadata: no licence terms for {unlicensed} (a training manifest with a licence "
                f"record, or {LICENCE_FILE} in the model's directory)"
            )
        return cls(base, adapters)

    def serves(self, name: str) -> bool:
        """Whether `name` resolves (the base model or a served adapter)."""
        return name in self._by_name

    def resolve(self, name: str) -> ServedModel:
        try:
            return self._by_name[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def adapter_paths(self) -> list[Path]:
        return [Path(m.adapter.path) for m in self._by_name.values() if m.adapter is not None]

    def __iter__(self):
        return iter(list(self._by_name.values()))  # a copy: the admin API may change the map meanwhile
