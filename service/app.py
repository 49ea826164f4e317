"""The FastAPI app: `create_app(settings)`, whose lifespan owns the engine from start to shutdown.

One chat request, top to bottom (a completions request takes the same path through its own route):

1. `middleware.py`  `RequestMiddleware` gives the request an id, later counts it by final status.
2. `routes/__init__.py`  the `/v1` router runs `auth.require_api_key` first: 401 beats every other answer.
3. `protocol.py`  FastAPI validates the body into `ChatCompletionRequest` (errors → 400 via `errors.py`).
4. `deps.py`  `ModelDep` admits the request (503 while loading or draining) and hands over the `LoadedModel`.
5. `routes/chat.py`  the handler, one call per step below:
   `registry.py` resolves `model` to the base model or an adapter → `prompts.py` renders the chat template to
   token ids → `sampling.py` derives `GenerationParams` → `generation.py` `Generation.start` registers the
   request (metrics, drain) and sends it to `engine.py` (the only vLLM importer), awaiting the first step →
6. `output.py`  `respond` turns the engine steps into SSE bytes or one JSON body, usage included.

Errors are typed (`errors.py`) and become OpenAI's envelope at the edge; engine-neutral data types live in
`engine_types.py`. The HTTP server binds before the model is loaded: `/health` answers at once, `/ready` stays
503 until the engine is up, so a Kubernetes startupProbe can follow a multi-minute load. The model loads in a
worker thread (vLLM blocks while it loads weights and profiles memory), never at import time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.config import Settings
from service.context import AppContext, LoadedModel
from service.errors import install_error_handlers
from service.middleware import RequestMiddleware
from service.registry import ModelRegistry
from service.routes import api_router, health

logger = logging.getLogger(__name__)
ModelLoader = Callable[[Settings], LoadedModel]
STATS_INTERVAL_S = 10.0


def load_model(settings: Settings) -> LoadedModel:
    """Check adapters, load the tokenizer, start vLLM (blocking; runs in a worker thread)."""
    from transformers import AutoTokenizer

    from service.engine import Engine

    registry = ModelRegistry.from_modules(settings.model_name, settings.model, settings.lora_modules)
    tokenizer = AutoTokenizer.from_pretrained(settings.tokenizer or settings.model)
    engine = Engine.start(settings, registry.adapter_paths())
    return LoadedModel(engine, registry, tokenizer, vocab_size=len(tokenizer))


def create_app(
    settings: Settings,
    load: ModelLoader = load_model,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the app; the model loads when the app's lifespan starts.

    `load` is vLLM by default; fast tests pass a scripted engine. `on_load_error` lets the CLI stop the
    process when the model cannot load (a crash-looping pod is the signal Kubernetes understands); tests
    leave it unset and read `/health` instead.
    """
    context = AppContext(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(asyncio.to_thread(load, settings))
        stats: list[asyncio.Task] = []
        loader.add_done_callback(lambda task: stats.extend(_on_loaded(context, task, on_load_error)))
        try:
            yield
        finally:
            loader.cancel()
            for task in stats:
                task.cancel()
            await context.shutdown()

    app = FastAPI(title="tsumugi", version="0.1.0", lifespan=lifespan)
    app.state.context = context
    app.add_middleware(RequestMiddleware, metrics=context.metrics)
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(health.router)
    return app


def _on_loaded(
    context: AppContext, task: asyncio.Task, on_load_error: Callable[[BaseException], None] | None
) -> list[asyncio.Task]:
    """Publish the loaded model (or the load error); returns the background tasks it started."""
    if task.cancelled():
        return []
    error = task.exception()
    if error is not None:
        context.lifecycle.load_error = f"model failed to load: {error}"
        logger.error(context.lifecycle.load_error, exc_info=error)
        if on_load_error is not None:
            on_load_error(error)
        return []
    model: LoadedModel = task.result()
    context.model = model
    context.lifecycle.loaded = True
    # Everything loaded so far (torch, transformers, the tokenizer) lives until exit: frozen, the collector
    # stops re-scanning it, so full collections no longer pause streams (vLLM's server does the same).
    gc.collect()
    gc.freeze()
    logger.info("model %s ready (max_model_len=%d)", model.registry.base.name, model.max_model_len)
    return [asyncio.get_running_loop().create_task(_log_stats(model))]


async def _log_stats(model: LoadedModel) -> None:
    while True:
        await asyncio.sleep(STATS_INTERVAL_S)
        await model.engine.log_stats()
