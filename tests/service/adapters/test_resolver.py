"""`--resolve-adapters-on-request`, fast and in-process: a request naming a directory under `--adapter-dir` loads it
through the catalogue (once, however many requests ask at once); everything else stays a 404 as without the flag,
a refused directory is a 400 on `model`, and a key limited to some models loads nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.service.adapters.conftest import ADMIN, admin_app, write_adapter
from tests.service.fake_engine import API_KEY, CHAT, envelope, running_app

pytestmark = pytest.mark.anyio


def resolving_app(engine, tokenizer_dir, root: Path, **settings):
    return admin_app(engine, tokenizer_dir, root, resolve_adapters_on_request=True, **settings)


async def test_a_request_loads_the_adapter_its_model_names(engine, tokenizer_dir, root):
    async with running_app(resolving_app(engine, tokenizer_dir, root)) as client:
        chat = await client.post("/v1/chat/completions", json={**CHAT, "model": "ja-v1"})
        completion = await client.post("/v1/completions", json={"model": "support", "prompt": "hi", "max_tokens": 4})
        again = await client.post("/v1/chat/completions", json={**CHAT, "model": "ja-v1"})
        listed = (await client.get("/v1/adapters", headers=ADMIN)).json()["data"]
    assert (chat.status_code, completion.status_code, again.status_code) == (200, 200, 200)
    assert [(s["id"], s["state"], s["version"]) for s in listed] == [("ja-v1", "ready", 1), ("support", "ready", 1)]
    assert sorted(a.name for a in engine.adapters.values()) == ["ja-v1@v1", "support@v1"]
    assert [request[3].name for request in engine.requests] == ["ja-v1@v1", "support@v1", "ja-v1@v1"]


async def test_requests_at_once_load_it_once(engine, tokenizer_dir, root, monkeypatch):
    load = engine.add_adapter

    async def slow_load(adapter) -> None:  # the later requests arrive while the first one loads
        await asyncio.sleep(0.2)
        await load(adapter)

    monkeypatch.setattr(engine, "add_adapter", slow_load)
    async with running_app(resolving_app(engine, tokenizer_dir, root)) as client:
        chats = [client.post("/v1/chat/completions", json={**CHAT, "model": "ja-v2"}) for _ in range(4)]
        responses = await asyncio.gather(*chats)
    assert [r.status_code for r in responses] == [200] * 4
    assert [a.name for a in engine.adapters.values()] == ["ja-v2@v1"]


@pytest.mark.parametrize("model", ["no-such-dir", "ja-v1/../support", "../adapters/ja-v1", ".hidden", "x" * 65])
async def test_what_no_directory_names_stays_unknown(engine, tokenizer_dir, root, model):
    (root / ".hidden").mkdir()
    async with running_app(resolving_app(engine, tokenizer_dir, root)) as client:
        error = envelope(await client.post("/v1/chat/completions", json={**CHAT, "model": model}), 404,
                         "invalid_request_error")  # fmt: skip
    assert error["code"] == "model_not_found" and engine.adapters == {}


async def test_without_the_flag_a_directory_is_not_loaded(engine, tokenizer_dir, root):
    async with running_app(admin_app(engine, tokenizer_dir, root)) as client:
        error = envelope(await client.post("/v1/chat/completions", json={**CHAT, "model": "ja-v1"}), 404,
                         "invalid_request_error")  # fmt: skip
    assert error["code"] == "model_not_found" and engine.adapters == {}


async def test_a_directory_found_but_refused_is_a_400_naming_why(engine, tokenizer_dir, root):
    write_adapter(root / "rank32", rank=32)
    async with running_app(resolving_app(engine, tokenizer_dir, root)) as client:
        error = envelope(await client.post("/v1/chat/completions", json={**CHAT, "model": "rank32"}), 400,
                         "invalid_request_error")  # fmt: skip
        healthy = await client.post("/v1/chat/completions", json=CHAT)
    assert error["param"] == "model" and "rank 32 is above this server's --max-lora-rank" in error["message"]
    assert healthy.status_code == 200 and engine.adapters == {}


async def test_a_key_limited_to_some_models_loads_nothing_else(engine, tokenizer_dir, root, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - name: team-a\n    key: {API_KEY}\n    models: [fake, support]\n", encoding="utf-8")
    app = resolving_app(engine, tokenizer_dir, root, api_keys=[], api_keys_file=str(keys))
    async with running_app(app) as client:
        refused = await client.post("/v1/chat/completions", json={**CHAT, "model": "ja-v1"})
        allowed = await client.post("/v1/chat/completions", json={**CHAT, "model": "support"})
    assert refused.status_code in (403, 404) and allowed.status_code == 200
    assert [a.name for a in engine.adapters.values()] == ["support@v1"]


def test_the_flag_needs_an_adapter_dir():
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match="--resolve-adapters-on-request loads from --adapter-dir"):
        Settings(no_auth=True, resolve_adapters_on_request=True)


async def test_the_base_model_is_never_looked_up(engine, tokenizer_dir, root):
    write_adapter(root / "fake")  # a directory named like the base model must not shadow it
    async with running_app(resolving_app(engine, tokenizer_dir, root)) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert engine.adapters == {}
