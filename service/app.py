"""The FastAPI app: `create_app(settings)`, whose lifespan owns the engine from start to shutdown.

The HTTP server binds before the model is loaded: `/health` answers at once, `/ready` stays 503 until the
engine is up, so a Kubernetes startupProbe can follow a multi-minute load. The engine is built in a worker
thread (it blocks while vLLM loads weights and profiles memory) and never at import time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from transformers import AutoTokenizer

from service.config import Settings
from service.engine import Engine
from service.errors import install_error_handlers
from service.lifecycle import ServiceState
from service.metrics import RequestCountMiddleware, ServiceMetrics
from service.registry import ModelRegistry
from service.routes import chat, completions, health, models
from service.runner import RequestRunner

logger = logging.getLogger(__name__)
EngineFactory = Callable[[Settings, list[Path]], Engine]
STATS_INTERVAL_S = 10.0


def load_runner(settings: Settings, state: ServiceState, metrics: ServiceMetrics, start_engine: EngineFactory):
    """Check adapters, load the tokenizer, start the engine (blocking; runs in a worker thread)."""
    registry = ModelRegistry.from_modules(settings.model_name, settings.model, settings.lora_modules)
    tokenizer = AutoTokenizer.from_pretrained(settings.tokenizer or settings.model)
    engine = start_engine(settings, registry.adapter_paths())
    return RequestRunner(engine, registry, tokenizer, metrics, state)


async def _log_stats(runner: RequestRunner) -> None:
    while True:
        await asyncio.sleep(STATS_INTERVAL_S)
        await runner.engine.log_stats()


def create_app(
    settings: Settings,
    start_engine: EngineFactory = Engine.start,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the app; the engine starts when the app's lifespan starts.

    `on_load_error` lets the CLI stop the process when the model cannot load (a crash-looping pod is the
    signal Kubernetes understands); tests leave it unset and read `/health` instead.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServiceState = app.state.service_state
        loader = asyncio.create_task(asyncio.to_thread(load_runner, settings, state, app.state.metrics, start_engine))
        app.state.loader = loader
        loader.add_done_callback(lambda task: _on_loaded(app, task))
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            stats_task = getattr(app.state, "stats_task", None)
            if stats_task is not None:
                stats_task.cancel()
            runner: RequestRunner | None = getattr(app.state, "runner", None)
            if runner is not None:
                if not state.draining:
                    await state.drain(settings.drain_timeout, runner.engine.abort)
                runner.engine.shutdown()

    app = FastAPI(title="tsumugi", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.service_state = ServiceState()
    app.state.metrics = ServiceMetrics()
    app.add_middleware(RequestCountMiddleware, metrics=app.state.metrics)
    app.state.runner = None
    app.state.on_load_error = on_load_error
    install_error_handlers(app)
    for module in (chat, completions, models, health):
        app.include_router(module.router)
    return app


def _on_loaded(app: FastAPI, task: asyncio.Task) -> None:
    state: ServiceState = app.state.service_state
    if task.cancelled():
        return
    if task.exception() is not None:
        state.load_error = f"model failed to load: {task.exception()}"
        logger.error(state.load_error, exc_info=task.exception())
        if app.state.on_load_error is not None:
            app.state.on_load_error(task.exception())
        return
    runner = task.result()
    app.state.runner = runner
    app.state.stats_task = asyncio.get_running_loop().create_task(_log_stats(runner))
    state.loaded = True
    logger.info("model %s ready (max_model_len=%d)", runner.registry.base.name, runner.max_model_len)
