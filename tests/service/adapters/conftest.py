"""Fixtures of the fast adapter tests: an adapter root with four valid adapters, and the app with admin keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service.fake_engine import fake_app

ADMIN_KEY = "admin-key-123"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def write_adapter(directory: Path, rank: int = 8, **config: object) -> Path:
    """An adapter directory the checks accept (the scripted engine never reads the weights)."""
    directory.mkdir(parents=True, exist_ok=True)
    values = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj"], "bias": "none"}
    (directory / "adapter_config.json").write_text(json.dumps(values | config), encoding="utf-8")
    (directory / "adapter_model.safetensors").write_bytes(b"")
    return directory


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "adapters").mkdir()
    for name in ("ja-v1", "ja-v2", "ja-v3", "support"):
        write_adapter(tmp_path / "adapters" / name)
    return tmp_path / "adapters"


def admin_app(engine, tokenizer_dir, root, **settings):
    return fake_app(engine, tokenizer_dir, adapter_dir=str(root), admin_api_keys=[ADMIN_KEY], **settings)
