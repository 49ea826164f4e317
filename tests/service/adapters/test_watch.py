"""`--watch-adapter-dir`: complete directories (with the ready marker) are loaded by name, changed ones get a new
version, removed ones retire; incomplete ones are ignored; refused ones are retried only when they change; names
served by someone else are left alone. Scans are driven by hand here (the service runs one every few seconds)."""

from __future__ import annotations

import os
import shutil

import pytest

from service.adapters.watch import READY_MARKER, AdapterDirWatcher
from tests.service.adapters.conftest import ADMIN, ADMIN_KEY, write_adapter
from tests.service.fake_engine import CHAT, fake_app, running_app

pytestmark = pytest.mark.anyio


def ready(directory, rank: int = 8):
    write_adapter(directory, rank=rank)
    (directory / READY_MARKER).write_text("")
    return directory


def touch(path, seconds: int) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 10**9))


async def test_the_catalogue_follows_the_directory(engine, tokenizer_dir, tmp_path):
    root = tmp_path / "adapters"
    ready(root / "ja")
    write_adapter(root / "half-written")  # no marker yet
    app = fake_app(engine, tokenizer_dir, adapter_dir=str(root), admin_api_keys=[ADMIN_KEY])
    async with running_app(app) as client:
        catalogue = app.state.context.adapters
        watcher = AdapterDirWatcher(catalogue, root)
        await watcher.scan()
        assert [h.name for h in engine.adapters.values()] == ["ja@v1"]
        assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "ja"})).status_code == 200

        await watcher.scan()  # nothing changed: nothing loaded again
        (root / "half-written" / READY_MARKER).write_text("")
        touch(root / "ja" / READY_MARKER, 5)  # rewritten: a new version
        await watcher.scan()
        await catalogue.settled()
        assert sorted(h.name for h in engine.adapters.values()) == ["half-written@v1", "ja@v2"]
        assert [h.name for h in engine.removed] == ["ja@v1"]

        shutil.rmtree(root / "half-written")
        (root / "ja" / READY_MARKER).unlink()  # being rewritten: retired until its marker is back
        await watcher.scan()
        await catalogue.settled()
        assert engine.adapters == {}
        assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "ja"})).status_code == 404


async def test_refused_directories_wait_for_a_change_and_foreign_names_are_left_alone(engine, tokenizer_dir, tmp_path):
    root = tmp_path / "adapters"
    ready(root / "big", rank=32)  # above --max-lora-rank 16
    ready(root / "mine")
    app = fake_app(engine, tokenizer_dir, adapter_dir=str(root), admin_api_keys=[ADMIN_KEY])
    async with running_app(app) as client:
        assert (
            await client.post("/v1/adapters", json={"name": "mine", "path": "mine"}, headers=ADMIN)
        ).status_code == 201
        watcher = AdapterDirWatcher(app.state.context.adapters, root)
        await watcher.scan()
        states = {s["id"]: s for s in (await client.get("/v1/adapters", headers=ADMIN)).json()["data"]}
        assert states["big"]["state"] == "failed" and "--max-lora-rank 16" in states["big"]["reason"]
        assert states["mine"]["version"] == 1  # the admin API's: not replaced by the watcher
        ready(root / "big", rank=8)
        touch(root / "big" / READY_MARKER, 5)
        shutil.rmtree(root / "mine")
        await watcher.scan()
        states = {s["id"]: s for s in (await client.get("/v1/adapters", headers=ADMIN)).json()["data"]}
    assert states["big"]["state"] == "ready" and states["mine"]["state"] == "ready"  # still served: not ours


def test_watching_needs_the_adapter_dir():
    from service.config import Settings

    with pytest.raises(ValueError, match="--watch-adapter-dir watches --adapter-dir"):
        Settings(no_auth=True, watch_adapter_dir=True)
