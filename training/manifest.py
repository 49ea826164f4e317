"""What every output directory records about how it was made: inputs (with hashes), settings, results, code.

A served model should be traceable to its base model, data files, recipe and code version; the manifest is
that record. Derived artifacts (merged, quantized) name their parent by the SHA-256 of the parent's manifest
file and embed that manifest, so adapter → merged → AWQ is one chain a reader can verify link by link, and the
service returns it from `GET /v1/models/{id}`. `loss_curve.png` is drawn from the trainer's log history.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tsumugi.model_identity import file_sha256, model_identity

MANIFEST_NAME = "training_manifest.json"
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "llmcompressor")


def write_manifest(directory: Path, manifest: dict) -> None:
    (Path(directory) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")


def code_version() -> str | None:
    """The git commit of this checkout (with '-dirty' if it has local changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "training"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # not installed in this environment: not recorded
            continue
    return found


def last_value(history: list[dict], key: str) -> float | None:
    values = [entry[key] for entry in history if key in entry]
    return values[-1] if values else None


def build_manifest(cfg, history: list[dict], skipped: list[str], datasets: dict, records_per_file: dict) -> dict:
    return {
        "kind": "lora-adapter" if cfg.method == "lora" else "qlora-adapter",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": cfg.base,
        "base_model_identity": model_identity(cfg.base),
        "method": cfg.method,
        "template": cfg.data.template,
        "data_files": [
            {"path": p, "sha256": file_sha256(Path(p)), "records": records_per_file.get(str(Path(p)), 0)}
            for p in cfg.data.paths
        ],
        "examples": {name: len(ds) for name, ds in datasets.items()},
        "skipped_records": skipped,
        "config": cfg.to_dict(),
        "final_train_loss": last_value(history, "loss"),
        "final_eval_loss": last_value(history, "eval_loss"),
        "steps": max((entry.get("step", 0) for entry in history), default=0),
        "code_version": code_version(),
        "libraries": library_versions(),
    }


def derived_manifest(kind: str, parent_dir: Path, **details: object) -> dict:
    """Manifest of a merged or quantized model: what was done, the parent's manifest hash (`parent`) and the
    parent's manifest itself (`source`), or both None when the parent was not made by tsumugi."""
    parent_manifest = Path(parent_dir) / MANIFEST_NAME
    parent, source = None, None
    if parent_manifest.is_file():
        source = json.loads(parent_manifest.read_text(encoding="utf-8"))
        parent = {"path": str(parent_dir), "kind": source.get("kind"), "manifest_sha256": file_sha256(parent_manifest)}
    return {
        "kind": kind,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **details,
        "code_version": code_version(),
        "libraries": library_versions(),
        "licence": source.get("licence") if source else None,  # the training run's terms travel down the chain
        "parent": parent,
        "source": source,
    }


def write_loss_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e and "step" in e]
    figure, axis = plt.subplots(figsize=(6, 4))
    if train:
        axis.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        axis.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
