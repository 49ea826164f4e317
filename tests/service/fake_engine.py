"""A scripted engine behind the service's `EngineClient` interface, and the app around it, for fast tests.

It produces the edges a real engine rarely does on demand: a queue-cap refusal, a failure before the first
token or mid-stream, a bug of ours in the conversion, a model that never finishes loading. No vLLM, no
subprocess: the app runs in-process behind `httpx.ASGITransport`, its lifespan entered by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import FastAPI

from service.adapters.registry import ModelRegistry
from service.app import create_app
from service.config import Settings
from service.context import LoadedModel
from service.engine.types import AdapterHandle, ChoiceDelta, EngineInfo, EngineStep, GenerationParams
from service.errors import AdapterRejected

API_KEY = "fast-key"
BASE = "fake"
CHAT = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def envelope(response: httpx.Response, status: int, type_: str) -> dict:
    """The error of an OpenAI envelope, checked for its status, its four fields and its type."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == type_
    return error


def sse(text: str) -> list[str]:
    """The data of each server-sent event."""
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


@dataclass
class Script:
    """What the fake engine does with the next requests: emit `tokens` pieces of text, or fail at `fail_at`."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", " world", "!"])
    fail_at: int | None = None  # raise `failure` before step `fail_at` (0: before the first step)
    failure: Callable[[], BaseException] | None = None
    step_delay: float = 0.0


class FakeEngine:
    """Streams `Script.tokens`, one step per token, `n` choices in each step; records what it was asked."""

    def __init__(self, max_model_len: int = 64, max_num_seqs: int = 8) -> None:
        self.info = EngineInfo(max_model_len=max_model_len, max_num_seqs=max_num_seqs)
        self.script = Script()
        self.requests: list[tuple[str, list[int], GenerationParams, AdapterHandle | None]] = []
        self.aborted: list[str] = []
        self.closed: list[str] = []
        self.errored = False
        self.healthy = True
        self.adapters: dict[int, AdapterHandle] = {}  # loaded through add_adapter, by engine id
        self.removed: list[AdapterHandle] = []
        self.refuse_adapters: str | None = None  # a reason: add_adapter refuses every adapter with it
        self.resident: set[int] | None = None  # what resident_adapter_ids says (None: every loaded adapter)
        self.resident_delay = 0.0  # seconds each resident_adapter_ids answer takes (an engine core mid-step)
        self.resident_calls = 0
        self.shut_down = False

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: GenerationParams, adapter: AdapterHandle | None
    ) -> AsyncIterator[EngineStep]:
        self.requests.append((request_id, prompt_token_ids, params, adapter))
        script = self.script
        tokens = script.tokens[: params.max_tokens]
        try:
            for position, text in enumerate(tokens):
                if script.fail_at == position and script.failure is not None:
                    raise script.failure()
                if script.step_delay:
                    await asyncio.sleep(script.step_delay)
                if request_id in self.aborted:  # as vLLM: a last step, finished with no finish reason
                    yield EngineStep(
                        [ChoiceDelta(i, "", 0, None) for i in range(params.n)], len(prompt_token_ids), True
                    )
                    return
                last = position == len(tokens) - 1
                finish = ("stop" if len(tokens) < params.max_tokens else "length") if last else None
                deltas = [ChoiceDelta(i, text, 1, finish) for i in range(params.n)]
                yield EngineStep(deltas, len(prompt_token_ids), last)
        finally:
            self.closed.append(request_id)

    async def abort(self, request_ids: list[str]) -> None:
        self.aborted.extend(request_ids)

    async def add_adapter(self, adapter: AdapterHandle) -> None:
        if self.refuse_adapters is not None:
            raise AdapterRejected(f"The engine could not load the adapter: {self.refuse_adapters}", param="path")
        self.adapters[adapter.lora_id] = adapter

    async def remove_adapter(self, adapter: AdapterHandle) -> None:
        self.adapters.pop(adapter.lora_id, None)  # as vLLM: removing an id it never loaded is a no-op
        self.removed.append(adapter)

    async def resident_adapter_ids(self) -> set[int]:
        self.resident_calls += 1
        if self.resident_delay:
            await asyncio.sleep(self.resident_delay)
        return set(self.adapters) if self.resident is None else set(self.resident)

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine core died")

    async def log_stats(self) -> None:
        return None

    def shutdown(self) -> None:
        self.shut_down = True


def fake_loader(engine: FakeEngine, tokenizer_dir: Path, gate: threading.Event | None = None):
    """A `create_app(load=...)` that serves `engine`; `gate` (a threading.Event) holds the load until set."""

    def load(settings: Settings) -> LoadedModel:
        from transformers import AutoTokenizer

        if gate is not None and not gate.wait(timeout=30):
            raise TimeoutError("test gate never opened")
        registry = ModelRegistry.from_modules(
            settings.model_name,
            settings.model,
            settings.lora_modules,
            require_licence=settings.require_licence_metadata,
        )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        return LoadedModel(engine, registry, tokenizer, vocab_size=len(tokenizer))

    return load


@contextlib.asynccontextmanager
async def running_app(
    app: FastAPI, wait_loaded: bool = True, api_key: str | None = API_KEY
) -> AsyncIterator[httpx.AsyncClient]:
    """Enter the app's lifespan and yield a client speaking ASGI to it (no socket)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fake", headers=headers) as client:
            if wait_loaded:
                await wait_until_loaded(app)
            yield client


async def wait_until_loaded(app: FastAPI) -> None:
    context = app.state.context
    async with asyncio.timeout(30):
        while context.model is None and context.lifecycle.load_error is None:  # noqa: ASYNC110 (set by a callback)
            await asyncio.sleep(0.01)


def fake_app(
    engine: FakeEngine, tokenizer_dir: Path, gate: threading.Event | None = None, **settings: object
) -> FastAPI:
    values = {"model": str(tokenizer_dir), "served_model_name": BASE, "api_keys": [API_KEY], **settings}
    return create_app(Settings(**values), load=fake_loader(engine, tokenizer_dir, gate=gate))
