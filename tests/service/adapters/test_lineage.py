"""Lineage: `GET /v1/models/{id}` returns a served model's training manifest and the chain of artifacts it came
from, each link checked by hash; a model without a manifest has none; a manifest that cannot be read stops the
load visibly. Fast, in-process (the scripted engine). The real chain (SFT → merge → AWQ, each served by the
real service) is checked in tests/training/test_end_to_end.py."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from service.adapters.lineage import MANIFEST_FILE, Lineage, read_lineage
from service.errors import ArtifactError
from tests.service.fake_engine import BASE, CHAT, envelope, fake_app, running_app

pytestmark = pytest.mark.anyio

ADAPTER_MANIFEST = {
    "kind": "lora-adapter",
    "created": "2026-12-01T00:00:00+00:00",
    "base_model": "models/smollm2-135m-instruct",
    "data_files": [{"path": "data/ja_sample.jsonl", "sha256": "ab" * 32, "records": 24}],
    "final_train_loss": 0.125,
}


def write_manifest(directory: Path, manifest: dict) -> str:
    """As training/manifest.py writes it; returns the file's SHA-256."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    (directory / MANIFEST_FILE).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def derived(kind: str, parent_dir: Path) -> dict:
    """A derived manifest the way `training.manifest.derived_manifest` builds one."""
    source = json.loads((parent_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    parent_sha = hashlib.sha256((parent_dir / MANIFEST_FILE).read_bytes()).hexdigest()
    parent = {"path": str(parent_dir), "kind": source["kind"], "manifest_sha256": parent_sha}
    return {"kind": kind, "created": "2026-12-01T01:00:00+00:00", "parent": parent, "source": source}


@pytest.fixture
def chain(tmp_path: Path) -> dict[str, Path]:
    """adapter → merged → awq directories, each with its manifest."""
    adapter = tmp_path / "adapter"
    write_manifest(adapter, ADAPTER_MANIFEST)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter / name).write_text("{}")
    write_manifest(tmp_path / "merged", derived("merged", adapter))
    write_manifest(tmp_path / "awq", derived("awq-w4a16", tmp_path / "merged"))
    return {"adapter": adapter, "merged": tmp_path / "merged", "awq": tmp_path / "awq"}


def test_each_link_of_a_chain_is_checked_by_hash(chain):
    lineage = read_lineage(chain["awq"])
    links = lineage.chain()
    assert [link["kind"] for link in links] == ["awq-w4a16", "merged", "lora-adapter"]
    assert all(link["verified"] for link in links)
    hashes = [hashlib.sha256((chain[name] / MANIFEST_FILE).read_bytes()).hexdigest() for name in chain]
    assert [link["manifest_sha256"] for link in links] == hashes[::-1]
    assert lineage.root()["data_files"][0]["records"] == 24


def test_an_embedded_manifest_that_differs_from_its_recorded_hash_is_not_verified(chain):
    def verified(edit) -> list[bool]:
        manifest = json.loads((chain["awq"] / MANIFEST_FILE).read_text(encoding="utf-8"))
        edit(manifest)
        return [link["verified"] for link in Lineage("0" * 64, manifest).chain()]

    assert verified(lambda m: None) == [True, True, True]
    # the merged record edited: its link breaks; the adapter below it still matches what merged recorded
    assert verified(lambda m: m["source"].update(created="2020-01-01")) == [True, False, True]
    # the adapter's record edited: it no longer matches merged's hash, nor merged (which embeds it) awq's
    assert verified(lambda m: m["source"]["source"].update(final_train_loss=0.001)) == [True, False, False]
    # a link without a recorded hash cannot be verified
    assert verified(lambda m: m["source"].update(parent=None)) == [True, False, False]


def test_no_manifest_is_no_lineage_and_an_unreadable_one_is_an_error(tmp_path):
    assert read_lineage(tmp_path) is None and read_lineage("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    (tmp_path / MANIFEST_FILE).write_text('{"kind": "merged",')
    with pytest.raises(ArtifactError, match="not a readable JSON manifest"):
        read_lineage(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("[]")
    with pytest.raises(ArtifactError, match="must be a JSON object"):
        read_lineage(tmp_path)


async def test_a_model_card_carries_the_lineage_and_the_load_logs_it(engine, tokenizer_dir, chain, caplog):
    app = fake_app(engine, tokenizer_dir, model=str(chain["awq"]), lora_modules=[f"ja={chain['adapter']}"])
    with caplog.at_level(logging.INFO, logger="service.app"):
        async with running_app(app) as client:
            card = (await client.get(f"/v1/models/{BASE}")).json()
            adapter_card = (await client.get("/v1/models/ja")).json()
            listing = (await client.get("/v1/models")).json()
            envelope(await client.get("/v1/models/nope"), 404, "invalid_request_error")
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert card["id"] == BASE and card["object"] == "model" and card["root"] == str(chain["awq"])
    assert [link["kind"] for link in card["lineage"]["chain"]] == ["awq-w4a16", "merged", "lora-adapter"]
    assert all(link["verified"] for link in card["lineage"]["chain"])
    assert card["lineage"]["manifest"]["parent"]["path"] == str(chain["merged"])
    assert adapter_card["parent"] == BASE and adapter_card["lineage"]["manifest"] == ADAPTER_MANIFEST
    assert all("lineage" not in entry for entry in listing["data"])  # the list stays OpenAI's small objects
    logged = [r.getMessage() for r in caplog.records if "lineage" in r.getMessage()]
    assert len(logged) == 2 and "awq-w4a16:" in logged[0] and "data/ja_sample.jsonl" in logged[0]


async def test_a_model_without_a_manifest_has_null_lineage(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        card = (await client.get(f"/v1/models/{BASE}")).json()
    assert card["id"] == BASE and card["lineage"] is None


async def test_a_model_id_with_slashes_is_found(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir, served_model_name="org/model-v1")) as client:
        assert (await client.get("/v1/models/org/model-v1")).json()["id"] == "org/model-v1"


async def test_an_unreadable_manifest_fails_the_load_visibly(engine, tokenizer_dir, chain):
    (chain["adapter"] / MANIFEST_FILE).write_text("not json")
    app = fake_app(engine, tokenizer_dir, lora_modules=[f"ja={chain['adapter']}"])
    async with running_app(app) as client:
        health = await client.get("/health")
    assert health.status_code == 503 and "not a readable JSON manifest" in health.json()["detail"]


async def test_model_cards_need_a_key(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir), api_key=None) as client:
        envelope(await client.get(f"/v1/models/{BASE}"), 401, "authentication_error")


LICENCE = {
    "intended_use": "research",
    "inputs": [{"input": "data file d.jsonl", "licence": "CC-BY-NC-SA-4.0"}],
    "obligations": {"attribution": ["ichikara-instruction (CC BY-NC-SA 4.0)"], "non_commercial": True},
    "accepted_risk": None,
}


async def test_the_licence_record_and_declared_terms_are_shown(engine, tokenizer_dir, chain, tmp_path):
    write_manifest(chain["adapter"], ADAPTER_MANIFEST | {"licence": LICENCE})
    base = tmp_path / "base"
    base.mkdir()
    (base / "licence.yaml").write_text("known: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    app = fake_app(engine, tokenizer_dir, model=str(base), lora_modules=[f"ja={chain['adapter']}"])
    async with running_app(app) as client:
        adapter_card = (await client.get("/v1/models/ja")).json()
        base_card = (await client.get(f"/v1/models/{BASE}")).json()
    assert adapter_card["licence"] == LICENCE
    assert base_card["licence"] == {"declared": {"known": "HuggingFaceTB/SmolLM2-135M-Instruct"}}
    assert base_card["lineage"] is None


async def test_require_licence_metadata_refuses_a_model_without_terms(engine, tokenizer_dir, chain):
    app = fake_app(engine, tokenizer_dir, lora_modules=[f"ja={chain['adapter']}"], require_licence_metadata=True)
    async with running_app(app) as client:
        health = await client.get("/health")
        error = envelope(await client.post("/v1/chat/completions", json=CHAT), 503, "service_unavailable")
    assert health.status_code == 503 and "--require-licence-metadata: no licence terms for" in health.json()["detail"]
    assert f"'{BASE}'" in error["message"] and "'ja'" in error["message"]


async def test_a_licence_file_that_declares_nothing_is_an_error(engine, tokenizer_dir, tmp_path):
    (tmp_path / "licence.yaml").write_text("note: ask legal\n")
    async with running_app(fake_app(engine, tokenizer_dir, model=str(tmp_path))) as client:
        health = await client.get("/health")
    assert health.status_code == 503 and "must declare 'licence: ...'" in health.json()["detail"]
