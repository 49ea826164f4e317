"""The admin API and the adapter catalogue, fast and in-process (the scripted engine records what it loads and
unloads): admin keys only, every refusal a 400 with its reason and the engine untouched, versions with their own
engine identity, running requests finishing on the version they started on, retired versions unloaded only when
their last request ends, concurrent changes serialised."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.service.adapters.conftest import ADMIN, ADMIN_KEY, admin_app, write_adapter
from tests.service.fake_engine import API_KEY, BASE, CHAT, Script, envelope, fake_app, running_app

pytestmark = pytest.mark.anyio


async def test_admin_routes_take_admin_keys_only(engine, tokenizer_dir, root):
    async with running_app(admin_app(engine, tokenizer_dir, root), api_key=None) as client:
        envelope(await client.get("/v1/adapters"), 401, "authentication_error")
        wrong = {"Authorization": "Bearer nope"}
        envelope(await client.get("/v1/adapters", headers=wrong), 401, "authentication_error")
        user = {"Authorization": f"Bearer {API_KEY}"}
        error = envelope(await client.post("/v1/adapters", json={"name": "x", "path": "ja-v1"}, headers=user), 403,
                         "permission_error")  # fmt: skip
        assert "admin key" in error["message"]
        envelope(await client.post("/v1/chat/completions", json=CHAT, headers=ADMIN), 401, "authentication_error")
        assert (await client.get("/v1/adapters", headers=ADMIN)).json() == {"object": "list", "data": []}
    assert engine.adapters == {}


async def test_without_admin_keys_the_admin_api_is_disabled(engine, tokenizer_dir):
    async with running_app(fake_app(engine, tokenizer_dir)) as client:
        error = envelope(await client.get("/v1/adapters"), 403, "permission_error")
    assert "disabled" in error["message"]


async def test_add_serves_the_new_name_at_once(engine, tokenizer_dir, root):
    async with running_app(admin_app(engine, tokenizer_dir, root)) as client:
        r = await client.post("/v1/adapters", json={"name": "ja", "path": "ja-v1"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        state = r.json()
        assert (state["id"], state["state"], state["version"], state["path"]) == ("ja", "ready", 1, str(root / "ja-v1"))
        assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "ja"})).status_code == 200
        models = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
        listed = (await client.get("/v1/adapters", headers=ADMIN)).json()["data"]
        envelope(await client.post("/v1/adapters", json={"name": "ja", "path": "ja-v2"}, headers=ADMIN), 409,
                 "invalid_request_error")  # fmt: skip
    (loaded,) = engine.adapters.values()
    assert loaded.name == "ja@v1" and engine.requests[-1][3] == loaded  # the request ran on that version
    assert models["ja"]["parent"] == BASE and listed[0]["requests"] == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"name": "ja", "path": "../outside"}, "may not contain '..'"),
        ({"name": "ja", "path": "/etc"}, "outside the adapter root"),
        ({"name": "ja", "path": "escape"}, "outside the adapter root"),  # a symlink out of the root
        ({"name": "ja", "path": "missing"}, "not a directory"),
        ({"name": "ja/../x", "path": "ja-v1"}, "An adapter name is"),
        ({"name": BASE, "path": "ja-v1"}, "the base model's name"),
        ({"name": "ja", "path": "rank32"}, "rank 32 is above this server's --max-lora-rank 16"),
        ({"name": "ja", "path": "dora"}, "DoRA"),
        ({"name": "ja", "path": "no-weights"}, "adapter_model.safetensors not found"),
        ({"name": "ja", "path": "ja-v1", "extra": 1}, "extra"),
    ],
)
async def test_each_refusal_names_its_reason_and_leaves_the_engine_alone(engine, tokenizer_dir, root, body, reason):
    (root.parent / "outside").mkdir()
    write_adapter(root.parent / "outside" / "secret")
    (root / "escape").symlink_to(root.parent / "outside" / "secret")
    write_adapter(root / "rank32", rank=32)
    write_adapter(root / "dora", use_dora=True)
    (write_adapter(root / "no-weights") / "adapter_model.safetensors").unlink()
    async with running_app(admin_app(engine, tokenizer_dir, root)) as client:
        error = envelope(await client.post("/v1/adapters", json=body, headers=ADMIN), 400, "invalid_request_error")
        healthy = (await client.get("/health")).status_code
        chat = await client.post("/v1/chat/completions", json=CHAT)
    assert reason in error["message"] and engine.adapters == {}
    assert healthy == 200 and chat.status_code == 200


async def test_an_adapter_the_engine_refuses_is_failed_with_the_reason(engine, tokenizer_dir, root):
    engine.refuse_adapters = "While loading ja@v1, expected target modules in {...}"
    async with running_app(admin_app(engine, tokenizer_dir, root)) as client:
        error = envelope(await client.post("/v1/adapters", json={"name": "ja", "path": "ja-v1"}, headers=ADMIN),
                         400, "invalid_request_error")  # fmt: skip
        (state,) = (await client.get("/v1/adapters", headers=ADMIN)).json()["data"]
        envelope(await client.post("/v1/chat/completions", json={**CHAT, "model": "ja"}), 404, "invalid_request_error")
        engine.refuse_adapters = None
        again = await client.post("/v1/adapters", json={"name": "ja", "path": "ja-v1"}, headers=ADMIN)
        assert again.status_code == 201
        metrics = (await client.get("/metrics")).text
    assert "expected target modules" in error["message"]
    assert state["state"] == "failed" and "expected target modules" in state["reason"]
    assert 'tsumugi_adapter_load_failures_total{stage="engine"} 1.0' in metrics
    assert 'tsumugi_adapter_ready{model="ja"} 1.0' in metrics


async def test_replace_lets_running_requests_finish_on_their_version(engine, tokenizer_dir, root):
    engine.script = Script(tokens=[f"t{i}" for i in range(8)], step_delay=0.05)
    app = admin_app(engine, tokenizer_dir, root)
    async with running_app(app) as client:
        await client.post("/v1/adapters", json={"name": "ja", "path": "ja-v1"}, headers=ADMIN)
        running = asyncio.create_task(client.post("/v1/chat/completions", json={**CHAT, "model": "ja", "stream": True}))
        while not engine.requests:  # noqa: ASYNC110 (the scripted engine records the request it starts)
            await asyncio.sleep(0.01)
        r = await client.put("/v1/adapters/ja", json={"path": "ja-v2"}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["version"] == 2
        await app.state.context.adapters.settled()
        removed_while_running = list(engine.removed)
        after = await client.post("/v1/chat/completions", json={**CHAT, "model": "ja"})
        first = await running
        await app.state.context.adapters.settled()
    v1, v2 = engine.requests[0][3], engine.requests[1][3]
    assert (v1.name, v2.name) == ("ja@v1", "ja@v2") and v1.lora_id != v2.lora_id
    assert first.status_code == 200 and "[DONE]" in first.text and after.status_code == 200
    assert removed_while_running == [] and engine.removed == [v1]  # unloaded once its request ended
    assert list(engine.adapters.values()) == [v2]


async def test_delete_refuses_new_requests_and_unloads_when_idle(engine, tokenizer_dir, root):
    app = admin_app(engine, tokenizer_dir, root)
    async with running_app(app) as client:
        await client.post("/v1/adapters", json={"name": "ja", "path": "ja-v1"}, headers=ADMIN)
        r = await client.delete("/v1/adapters/ja", headers=ADMIN)
        envelope(await client.post("/v1/chat/completions", json={**CHAT, "model": "ja"}), 404, "invalid_request_error")
        envelope(await client.delete("/v1/adapters/ja", headers=ADMIN), 404, "invalid_request_error")
        await app.state.context.adapters.settled()
        metrics = (await client.get("/metrics")).text
    assert r.json() == {"id": "ja", "object": "adapter", "deleted": True}
    assert engine.adapters == {} and [h.name for h in engine.removed] == ["ja@v1"]
    assert 'tsumugi_adapter_ready{model="ja"} 0.0' in metrics


async def test_concurrent_changes_for_a_name_are_serialised(engine, tokenizer_dir, root):
    app = admin_app(engine, tokenizer_dir, root)
    async with running_app(app) as client:
        await client.post("/v1/adapters", json={"name": "ja", "path": "ja-v1"}, headers=ADMIN)
        puts = [client.put("/v1/adapters/ja", json={"path": path}, headers=ADMIN) for path in ("ja-v2", "ja-v3")]
        versions = sorted(r.json()["version"] for r in await asyncio.gather(*puts))
        await app.state.context.adapters.settled()
        (state,) = (await client.get("/v1/adapters", headers=ADMIN)).json()["data"]
    assert versions == [2, 3] and state["version"] == 3
    assert [h.name for h in engine.adapters.values()] == ["ja@v3"]
    assert sorted(h.name for h in engine.removed) == ["ja@v1", "ja@v2"]


async def test_a_start_up_adapter_can_be_replaced(engine, tokenizer_dir, root):
    app = admin_app(engine, tokenizer_dir, root, lora_modules=[f"support={root / 'support'}"])
    async with running_app(app) as client:
        (state,) = (await client.get("/v1/adapters", headers=ADMIN)).json()["data"]
        r = await client.put("/v1/adapters/support", json={"path": "ja-v1"}, headers=ADMIN)
        await app.state.context.adapters.settled()
        await client.post("/v1/chat/completions", json={**CHAT, "model": "support"})
    assert (state["id"], state["version"]) == ("support", 1)
    assert r.json()["version"] == 2 and engine.requests[-1][3].name == "support@v2"
    assert [h.name for h in engine.removed] == ["support"]


async def test_runtime_loading_needs_an_adapter_dir(engine, tokenizer_dir, root):
    async with running_app(fake_app(engine, tokenizer_dir, admin_api_keys=[ADMIN_KEY])) as client:
        error = envelope(await client.post("/v1/adapters", json={"name": "ja", "path": str(root / "ja-v1")},
                                           headers=ADMIN), 403, "permission_error")  # fmt: skip
    assert "--adapter-dir" in error["message"]


async def test_an_adapter_trained_on_other_base_weights_is_refused(engine, tokenizer_dir, root, tmp_path):
    from service.adapters.lineage import MANIFEST_FILE
    from tsumugi.model_identity import weights_sha256

    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"the served weights")
    for name, weights in (("other", "0" * 64), ("ours", weights_sha256(base))):
        manifest = {"kind": "lora-adapter", "base_model_identity": {"name": "b", "weights_sha256": weights}}
        (write_adapter(root / name) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    async with running_app(admin_app(engine, tokenizer_dir, root, model=str(base))) as client:
        error = envelope(await client.post("/v1/adapters", json={"name": "a", "path": "other"}, headers=ADMIN), 400,
                         "invalid_request_error")  # fmt: skip
        ours = await client.post("/v1/adapters", json={"name": "b", "path": "ours"}, headers=ADMIN)
    assert "trained on other base weights" in error["message"] and ours.status_code == 201
    assert [h.name for h in engine.adapters.values()] == ["b@v1"]


async def test_start_up_adapters_are_loaded_before_the_first_request(engine, tokenizer_dir, root):
    app = fake_app(engine, tokenizer_dir, lora_modules=[f"support={root / 'support'}"])
    async with running_app(app) as client:
        loaded = [h.name for h in engine.adapters.values()]
        assert (await client.get("/health")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert loaded == ["support"] and 'tsumugi_adapter_ready{model="support"} 1.0' in metrics


async def test_a_start_up_adapter_the_engine_refuses_fails_the_start(engine, tokenizer_dir, root):
    engine.refuse_adapters = "While loading support, expected target modules in {'q_proj'} but received ['x']"
    app = fake_app(engine, tokenizer_dir, lora_modules=[f"support={root / 'support'}"])
    async with running_app(app) as client:
        health = await client.get("/health")
    assert health.status_code == 503
    assert "adapter 'support': The engine could not load the adapter: While loading" in health.json()["detail"]
    assert engine.shut_down


async def test_concurrent_adapter_requests_share_one_residency_question(engine, tokenizer_dir, root):
    """Requests sent while the engine is being asked which adapters it holds take that answer: the engine is
    asked about once per answer time, not once per request (each question waits in the engine core's queue)."""
    app = admin_app(engine, tokenizer_dir, root)
    async with running_app(app) as client:
        assert (await client.post("/v1/adapters", json={"name": "ja", "path": "ja-v1"}, headers=ADMIN)).is_success
        engine.resident, engine.resident_delay = set(), 0.3  # held on disk; each answer takes 0.3 s
        engine.script = Script(tokens=["a", "b"], step_delay=0.3)  # answered before each request ends
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json={**CHAT, "model": "ja"}) for _ in range(8))
        )
        await app.state.context.adapters.settled()
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in replies] == [200] * 8
    assert engine.resident_calls <= 2  # 8 when each request asks for itself
    assert 'tsumugi_adapter_cold_loads_total{model="ja"} 8.0' in metrics  # each counted from the shared answer


async def test_cold_loads_and_evictions_are_counted(engine, tokenizer_dir, root):
    """The engine says which adapters it holds in memory: a request for one it does not hold is a cold load
    (its time to first token observed apart), and one seen held before and gone now is an eviction."""
    app = admin_app(engine, tokenizer_dir, root)
    async with running_app(app) as client:
        for name, path in (("ja", "ja-v1"), ("support", "support")):
            assert (await client.post("/v1/adapters", json={"name": name, "path": path}, headers=ADMIN)).is_success
        ja, support = (h.lora_id for h in engine.adapters.values())
        catalogue = app.state.context.adapters

        async def ask(model: str) -> None:
            assert (await client.post("/v1/chat/completions", json={**CHAT, "model": model})).status_code == 200
            await catalogue.settled()

        engine.resident = {ja}  # ja in memory, support on disk
        await ask("ja")
        await ask("support")
        engine.resident = {support}  # support read in, ja pushed out
        await ask("support")
        metrics = (await client.get("/metrics")).text
    assert 'tsumugi_adapter_cold_loads_total{model="support"} 1.0' in metrics
    assert 'tsumugi_adapter_cold_loads_total{model="ja"}' not in metrics
    assert "tsumugi_adapter_cold_start_seconds_count 1.0" in metrics
    assert "tsumugi_adapter_evictions_total 1.0" in metrics
    assert "tsumugi_adapters_in_memory 1.0" in metrics
