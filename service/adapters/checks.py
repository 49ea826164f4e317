"""Checks on an adapter before the engine sees it: a valid name, a directory inside the allowed root, and an
adapter vLLM can load onto the served base model.

vLLM loads an adapter inside its engine loop; a load that fails there (unreadable files) ends the engine for
every request, and vLLM never compares an adapter's base model with the served one. So everything that can be
read from the directory is checked here first, in our terms, and a refusal names the reason (a 400 for the
admin API, a start-up error for `--lora-modules`) while the engine stays untouched:

* the name: 1-64 letters, digits, `.`, `_`, `-`, starting with a letter or digit, not the base model's name;
* the path: relative to `--adapter-dir` (or absolute inside it), no `..` part, and resolving, symlinks followed,
  to a directory inside it;
* `adapter_config.json`: a LoRA (`peft_type` LORA), rank (and every `rank_pattern` rank) at most
  `--max-lora-rank`, none of the features vLLM 0.32 refuses (DoRA, trained biases, extra trained modules,
  layer replication), `adapter_model.safetensors` present;
* the base model: when the adapter's training manifest records the base's weight hash, it must equal the served
  base's (hashed once, on first need); else `base_model_name_or_path` is reported, not enforced (a hub name and
  a local copy of the same model cannot be told apart by name).

Rank values vLLM accepts for `--max-lora-rank` are a fixed set; an adapter's own rank may be anything up to it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from service.adapters.lineage import read_lineage
from service.errors import AdapterRejected

ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
UNSUPPORTED_FEATURES = {  # adapter_config.json key -> why vLLM 0.32 cannot serve it (lora/peft_helper.py)
    "use_dora": "DoRA adapters are not supported by vLLM",
    "layer_replication": "layer replication is not supported by vLLM",
    "use_alora": "activated LoRA is not supported by vLLM",
}


@dataclass(frozen=True, slots=True)
class AdapterFacts:
    """What the checks read from an adapter directory."""

    directory: Path
    rank: int
    target_modules: tuple[str, ...] | str
    base_model_name: str | None  # adapter_config.json's base_model_name_or_path
    base_weights_sha256: str | None  # from the training manifest, when tsumugi trained it


def check_name(name: object, base_name: str) -> str:
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
        raise AdapterRejected(
            "An adapter name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.", param="name"
        )
    if name == base_name:
        raise AdapterRejected(f"'{name}' is the base model's name.", param="name")
    return name


def adapter_directory(root: Path, path: object) -> Path:
    """The directory `path` names under `root`, resolved (symlinks followed); refused if it leaves `root`."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise AdapterRejected("'path' must be a directory under the adapter root.", param="path")
    given = Path(path)
    if ".." in given.parts:
        raise AdapterRejected("'path' may not contain '..'.", param="path")
    root = root.resolve()
    resolved = (given if given.is_absolute() else root / given).resolve()
    if not resolved.is_relative_to(root):
        raise AdapterRejected(f"'{path}' is outside the adapter root.", param="path")
    if not resolved.is_dir():
        raise AdapterRejected(f"'{path}' is not a directory under the adapter root.", param="path")
    return resolved


def read_adapter(directory: Path, max_lora_rank: int) -> AdapterFacts:
    """The adapter's configuration, checked against what vLLM can load with this `--max-lora-rank`."""
    config_path = directory / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterRejected("adapter_config.json not found: not a PEFT adapter directory.", param="path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterRejected(f"adapter_config.json is not valid JSON ({error}).", param="path") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterRejected("adapter_config.json does not describe a LoRA adapter.", param="path")
    if not (directory / "adapter_model.safetensors").is_file():
        raise AdapterRejected("adapter_model.safetensors not found.", param="path")
    rank = config.get("r")
    ranks = [rank, *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        raise AdapterRejected("adapter_config.json: 'r' must be a positive integer.", param="path")
    if max(ranks) > max_lora_rank:
        raise AdapterRejected(
            f"The adapter's rank {max(ranks)} is above this server's --max-lora-rank {max_lora_rank}.", param="path"
        )
    for key, why in UNSUPPORTED_FEATURES.items():
        if config.get(key):
            raise AdapterRejected(f"{why} ({key}).", param="path")
    if config.get("bias", "none") != "none":
        raise AdapterRejected("Adapters with trained biases are not supported by vLLM (bias).", param="path")
    if config.get("modules_to_save"):
        raise AdapterRejected("Adapters that save whole modules are not supported (modules_to_save).", param="path")
    lineage = read_lineage(directory)
    identity = (lineage.root().get("base_model_identity") or {}) if lineage else {}
    targets = config.get("target_modules") or ()
    return AdapterFacts(
        directory=directory,
        rank=max(ranks),
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        base_model_name=config.get("base_model_name_or_path"),
        base_weights_sha256=identity.get("weights_sha256"),
    )


def check_base(facts: AdapterFacts, served_weights_sha256: str | None) -> None:
    """Refuse an adapter whose manifest names base weights other than the served ones."""
    if facts.base_weights_sha256 and served_weights_sha256 and facts.base_weights_sha256 != served_weights_sha256:
        raise AdapterRejected(
            f"The adapter was trained on other base weights (sha256 {facts.base_weights_sha256[:12]}...) than the "
            f"served model's ({served_weights_sha256[:12]}...).",
            param="path",
        )
