"""Shared fixtures: a tiny random Llama (built once per session), small data files, and a tiny-model SFT run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.tiny_model import build_tiny_llama
from training.config import load_config

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "ja_sample.jsonl"
SAMPLE_EVAL = REPO / "data" / "ja_sample_eval.json"
# Held-in records the tiny model must learn: short, distinctive answers from the shipped sample.
TINY_EVAL_ANSWERS = ["琵琶湖", "紫式部", "種子島", "信濃川", "北岳", "源頼朝"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def tiny_eval(tmp_path_factory) -> Path:
    """A data file of a few sample records plus its eval definition (the same records, held in)."""
    folder = tmp_path_factory.mktemp("tiny-data")
    spec = json.loads(SAMPLE_EVAL.read_text(encoding="utf-8"))
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    chosen = [item for item in spec["items"] if item["answer"] in TINY_EVAL_ANSWERS]
    (folder / "train.jsonl").write_text("\n".join(lines[i["index"]] for i in chosen) + "\n", encoding="utf-8")
    items = [{"index": n, "answer": item["answer"]} for n, item in enumerate(chosen)]
    (folder / "eval.json").write_text(json.dumps({"data": "train.jsonl", "items": items}), encoding="utf-8")
    return folder / "eval.json"


def tiny_config(base: Path, data: Path, out: Path, **overrides):
    """An SFT config that makes the tiny model memorise a handful of records in seconds."""
    values = {
        "base": str(base),
        "out": str(out),
        "data.paths": [str(data)],
        "data.validation_fraction": 0.0,
        "optim.max_steps": 120,
        "optim.lr": 5e-3,
        "optim.batch_size": 6,
        "optim.scheduler": "constant",
        "lora.dropout": 0.0,
        "save_steps": 1000,
    }
    values.update(overrides)
    return load_config(None, values)
