"""The FastAPI app: `create_app(settings)`, whose lifespan loads the model (`loading.py`) and owns it until shutdown.

A chat request, each module once: `api/middleware.py` (id, key, body limit; records the outcome at the end) →
`api/routes/chat.py` (body validated by `api/schemas/chat.py`; `api/deps.py` checks readiness once) →
`pipeline/start.py` (resolve in `adapters/registry.py`, `pipeline/prompts.py`, `pipeline/sampling.py`,
`pipeline/generation.py`: `access/admission.py`, then `engine/client.py`) → `api/render/chat.py` (SSE or JSON,
tool calls read by `pipeline/tools.py`). The HTTP server binds before the model loads: `/health` answers at
once, `/ready` stays 503 until the engine is up; the model loads in a worker thread, never at import time.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.access.admission import REJECTION_REASONS
from service.access.tenants import ANONYMOUS, KeyRing
from service.adapters.watch import AdapterDirWatcher
from service.api.middleware import RequestMiddleware
from service.api.routes import api_router, health, openapi_document
from service.config import Settings
from service.context import AppContext, LoadedModel
from service.errors import StartupError, install_error_handlers
from service.loading import ModelLoader, load_and_prepare, load_model

logger = logging.getLogger(__name__)
STATS_INTERVAL_S = 10.0
WATCH_INTERVAL_S = 0.5


def create_app(
    settings: Settings,
    load: ModelLoader = load_model,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the app; the model loads when the app's lifespan starts.

    `load` is vLLM by default; fast tests pass a scripted engine. `on_fatal` lets the CLI stop the process,
    non-zero, when the model cannot load or the engine dies later (a crash-looping pod, a container restart,
    is the signal supervisors understand); tests leave it unset and read `/health` instead. Raises
    `StartupError` for a configuration it cannot start with (keys file, chat template, tool parser).
    """
    keyring = None if settings.no_auth else KeyRing.load(settings.api_keys, settings.api_keys_file)
    admin_keyring = KeyRing.load(settings.admin_api_keys, None, prefix="admin") if settings.admin_api_keys else None
    settings.read_chat_template()  # a missing --chat-template file is a configuration error, before loading
    if settings.tool_call_parser:
        from service.engine.tool_parsers import parser_names  # vLLM's registry of parsers

        if settings.tool_call_parser not in parser_names():
            raise StartupError(
                f"--tool-call-parser {settings.tool_call_parser}: unknown; choose one of {', '.join(parser_names())}"
            )
    context = AppContext(settings, keyring)
    tenants = [t.name for t in keyring.tenants] if keyring else [ANONYMOUS.name]
    context.metrics.start_at_zero(tenants, REJECTION_REASONS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(load_and_prepare(load, settings))
        stats: list[asyncio.Task] = []
        loader.add_done_callback(lambda task: stats.extend(_on_loaded(context, task, on_fatal)))
        try:
            yield
        finally:
            loader.cancel()
            for task in stats:
                task.cancel()
            await context.shutdown()

    app = FastAPI(title="tsumugi", version="0.1.0", lifespan=lifespan)
    app.state.context = context
    app.add_middleware(
        RequestMiddleware,
        metrics=context.metrics,
        keyring=keyring,
        max_body_bytes=settings.max_request_body_bytes,
        admin_keyring=admin_keyring,
    )
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(health.router)
    app.openapi = lambda: openapi_document(app)
    return app


def _on_loaded(
    context: AppContext, task: asyncio.Task, on_fatal: Callable[[BaseException], None] | None
) -> list[asyncio.Task]:
    """Publish the loaded model (or the load error); returns the background tasks it started."""
    if task.cancelled():
        return []
    error = task.exception()
    if error is not None:
        context.lifecycle.load_error = f"model failed to load: {error}"
        # The operator's mistake (a model or adapter directory, a flag) is one line; a bug of ours keeps its traceback.
        logger.error(context.lifecycle.load_error, exc_info=None if isinstance(error, StartupError) else error)
        if on_fatal is not None:
            on_fatal(error)
        return []
    model: LoadedModel = task.result()
    context.publish(model)
    # Everything loaded so far (torch, transformers, the tokenizer) lives until exit: frozen, the collector
    # stops re-scanning it, so full collections no longer pause streams (vLLM's server does the same).
    gc.collect()
    gc.freeze()
    logger.info("model %s ready (max_model_len=%d)", model.registry.base.name, model.max_model_len)
    for served in model.registry:
        if served.lineage is not None:
            logger.info("model %s lineage %s", served.name, json.dumps(served.lineage.summary(), ensure_ascii=False))
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(_log_stats(model)), loop.create_task(_watch_engine(context, model, on_fatal))]
    settings = context.settings
    if settings.watch_adapter_dir and settings.adapter_dir is not None and context.adapters is not None:
        tasks.append(loop.create_task(AdapterDirWatcher(context.adapters, settings.adapter_dir).run()))
    return tasks


async def _watch_engine(
    context: AppContext, model: LoadedModel, on_fatal: Callable[[BaseException], None] | None
) -> None:
    """Notice a dead engine process within half a second: unhealthy at once, then exit so it restarts.

    vLLM's client marks itself errored when the engine-core process goes away; the API process would
    otherwise live on, answering errors, and only a liveness probe (if any) would ever restart it."""
    while not model.engine.errored:  # noqa: ASYNC110 (set by vLLM's client when another process dies)
        await asyncio.sleep(WATCH_INTERVAL_S)
    context.lifecycle.fatal = "the engine process died"
    logger.error("%s: failing /health and exiting so the supervisor restarts this replica", context.lifecycle.fatal)
    if on_fatal is not None:
        on_fatal(RuntimeError(context.lifecycle.fatal))


async def _log_stats(model: LoadedModel) -> None:
    while True:
        await asyncio.sleep(STATS_INTERVAL_S)
        await model.engine.log_stats()
