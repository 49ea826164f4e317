"""vLLM's runtime adapter routes (`POST /v1/load_lora_adapter`, `/v1/unload_lora_adapter`), fast and in-process:
admin keys only, vLLM's statuses and texts, every refusal a 400 naming vLLM's field, and the load going through
the catalogue (versions, the same checks) rather than a second path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.adapters.conftest import ADMIN, admin_app, write_adapter
from tests.service.fake_engine import API_KEY, BASE, CHAT, envelope, fake_app, running_app

pytestmark = pytest.mark.anyio
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"


async def test_the_vllm_routes_take_admin_keys_only(engine, tokenizer_dir, root):
    body = {"lora_name": "ja", "lora_path": "ja-v1"}
    async with running_app(admin_app(engine, tokenizer_dir, root), api_key=None) as client:
        for path in (LOAD, UNLOAD):
            envelope(await client.post(path, json=body), 401, "authentication_error")
            user = {"Authorization": f"Bearer {API_KEY}"}
            error = envelope(await client.post(path, json=body, headers=user), 403, "permission_error")
            assert "admin key" in error["message"]
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        error = envelope(await client.post(LOAD, json=body), 403, "permission_error")
        assert "disabled" in error["message"]
    assert engine.adapters == {}


async def test_load_request_unload_as_vllm_answers(engine, tokenizer_dir, root):
    app = admin_app(engine, tokenizer_dir, root)
    async with running_app(app) as client:
        loaded = await client.post(LOAD, json={"lora_name": "ja", "lora_path": str(root / "ja-v1")}, headers=ADMIN)
        chat = await client.post("/v1/chat/completions", json={**CHAT, "model": "ja"})
        listed = (await client.get("/v1/adapters", headers=ADMIN)).json()["data"]
        unloaded = await client.post(UNLOAD, json={"lora_name": "ja", "lora_int_id": 1}, headers=ADMIN)
        await app.state.context.adapters.settled()
        after = await client.post("/v1/chat/completions", json={**CHAT, "model": "ja"})
        again = await client.post(UNLOAD, json={"lora_name": "ja"}, headers=ADMIN)
    assert (loaded.status_code, loaded.text) == (200, "Success: LoRA adapter 'ja' added successfully.")
    assert chat.status_code == 200 and engine.requests[-1][3].name == "ja@v1"
    assert [(s["id"], s["version"], s["path"]) for s in listed] == [("ja", 1, str(root / "ja-v1"))]
    assert (unloaded.status_code, unloaded.text) == (200, "Success: LoRA adapter 'ja' removed successfully.")
    assert [removed.name for removed in engine.removed] == ["ja@v1"] and engine.adapters == {}
    envelope(after, 404, "invalid_request_error")
    error = envelope(again, 404, "invalid_request_error")
    assert (error["param"], error["message"]) == ("lora_name", "The lora adapter 'ja' cannot be found.")


async def test_a_served_name_is_a_400_unless_loaded_in_place(engine, tokenizer_dir, root):
    app = admin_app(engine, tokenizer_dir, root)
    async with running_app(app) as client:
        await client.post(LOAD, json={"lora_name": "ja", "lora_path": "ja-v1"}, headers=ADMIN)
        twice = await client.post(LOAD, json={"lora_name": "ja", "lora_path": "ja-v2"}, headers=ADMIN)
        served_then = {a.name for a in engine.adapters.values()}
        in_place = await client.post(
            LOAD, json={"lora_name": "ja", "lora_path": "ja-v2", "load_inplace": True}, headers=ADMIN
        )
        await app.state.context.adapters.settled()
        chat = await client.post("/v1/chat/completions", json={**CHAT, "model": "ja"})
        assert chat.status_code == 200
        first_in_place = await client.post(
            LOAD, json={"lora_name": "support", "lora_path": "support", "load_inplace": True}, headers=ADMIN
        )
    error = envelope(twice, 400, "invalid_request_error")
    assert error["param"] == "lora_name" and "set 'load_inplace' to True" in error["message"]
    assert served_then == {"ja@v1"}
    assert in_place.status_code == 200 and engine.requests[-1][3].name == "ja@v2"
    assert {a.name for a in engine.adapters.values()} == {"ja@v2", "support@v1"}
    assert first_in_place.status_code == 200  # as vLLM: load_inplace on a new name simply loads it


@pytest.mark.parametrize(
    ("path", "body", "param", "reason"),
    [
        (LOAD, {"lora_name": "ja", "lora_path": "ja-v1", "scale": 2}, "scale", "Extra inputs are not permitted"),
        (LOAD, {"lora_name": "ja"}, "lora_path", "Field required"),
        (LOAD, {"lora_name": "ja", "lora_path": "ja-v1", "is_3d_lora_weight": True}, "is_3d_lora_weight", "3D"),
        (LOAD, {"lora_name": BASE, "lora_path": "ja-v1"}, "lora_name", "the base model's name"),
        (LOAD, {"lora_name": "ja/x", "lora_path": "ja-v1"}, "lora_name", "An adapter name is"),
        (LOAD, {"lora_name": "ja", "lora_path": "/etc"}, "lora_path", "outside the adapter root"),
        (LOAD, {"lora_name": "ja", "lora_path": "rank32"}, "lora_path", "above this server's --max-lora-rank"),
        (UNLOAD, {"lora_name": "ja", "force": True}, "force", "Extra inputs are not permitted"),
        (UNLOAD, {}, "lora_name", "Field required"),
    ],
)
async def test_each_refusal_is_a_400_naming_the_field(engine, tokenizer_dir, root, path, body, param, reason):
    write_adapter(root / "rank32", rank=32)
    async with running_app(admin_app(engine, tokenizer_dir, root)) as client:
        error = envelope(await client.post(path, json=body, headers=ADMIN), 400, "invalid_request_error")
    assert error["param"] == param and reason in error["message"]
    assert engine.adapters == {}


async def test_an_engine_refusal_is_a_400_on_the_path(engine, tokenizer_dir, root: Path):
    engine.refuse_adapters = "While loading ja@v1, expected target modules in {...}"
    async with running_app(admin_app(engine, tokenizer_dir, root)) as client:
        response = await client.post(LOAD, json={"lora_name": "ja", "lora_path": "ja-v1"}, headers=ADMIN)
    error = envelope(response, 400, "invalid_request_error")
    assert error["param"] == "lora_path" and "expected target modules" in error["message"]
