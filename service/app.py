"""The FastAPI app: `create_app(settings)`, whose lifespan owns the engine from start to shutdown.

One chat request, top to bottom (a completions request takes the same path through its own route):

1. `middleware.py`  `RequestMiddleware` gives the request an id, later counts it by final status.
   It also authenticates `/v1` requests (`tenants.py`; 401 beats every other answer) and bounds the body (413).
2. `routes/__init__.py`  the `/v1` router; its OpenAPI document lists every status and the bearer scheme.
3. `protocol.py`  FastAPI validates the body into `ChatCompletionRequest` (errors → 400 via `errors.py`).
4. `deps.py`  `ModelDep` turns the request away while loading, draining or dead (503) and hands over the
   `LoadedModel`; `CallDep` brings the access-log record (who is calling) and the deadline.
5. `routes/chat.py`  the handler, one call per step below:
   `registry.py` resolves `model` to the base model or an adapter → `prompts.py` renders the chat template to
   token ids (long prompts in a worker thread) → `sampling.py` derives `GenerationParams` → `generation.py`
   `Generation.start` asks `admission.py` for a place (429 with Retry-After past the server's or the key's
   limits), registers the request (metrics, drain, deadline) and sends it to `engine.py` (the only vLLM
   importer), awaiting the first step →
6. `output.py`  `respond` turns the engine steps into SSE bytes or one JSON body, usage included. With `tools`,
   `tool_calls.py` decides how the output is constrained and read (`ToolCallPolicy`: a forced choice through a
   grammar, `auto` through vLLM's parser in `tool_parsing.py`), and its readers turn text into `tool_calls`.

`POST /v1/responses` (`routes/responses.py`) maps its request onto this same chat request
(`responses_protocol.py`) and only writes the answer differently (`responses.py`).

Errors are typed (`errors.py`) and become OpenAI's envelope at the edge; engine-neutral data types live in
`engine_types.py`. The HTTP server binds before the model is loaded: `/health` answers at once, `/ready` stays
503 until the engine is up, so a Kubernetes startupProbe can follow a multi-minute load. The model loads in a
worker thread (vLLM blocks while it loads weights and profiles memory), never at import time.
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
from service.adapters.registry import AdapterError, ModelRegistry
from service.adapters.watch import AdapterDirWatcher
from service.api.middleware import RequestMiddleware
from service.api.routes import api_router, health, openapi_document
from service.config import Settings
from service.context import AppContext, LoadedModel
from service.errors import AdapterRejected, install_error_handlers
from service.pipeline.prompts import longest_token
from tsumugi import tool_prompt

logger = logging.getLogger(__name__)
ModelLoader = Callable[[Settings], LoadedModel]
STATS_INTERVAL_S = 10.0
WATCH_INTERVAL_S = 0.5


def load_model(settings: Settings) -> LoadedModel:
    """Check adapters, load the tokenizer, start vLLM (blocking; runs in a worker thread)."""
    from transformers import AutoTokenizer

    from service.engine.client import Engine
    from service.engine.tool_parsers import ToolParsing

    registry = ModelRegistry.from_modules(
        settings.model_name,
        settings.model,
        settings.lora_modules,
        settings.read_chat_template(),
        require_licence=settings.require_licence_metadata,
    )
    tokenizer = AutoTokenizer.from_pretrained(settings.tokenizer or settings.model)
    tool_parsing = None
    if settings.enable_auto_tool_choice:
        tool_parsing = ToolParsing(
            tool_parser_name(settings, registry.base.chat_template or tokenizer.chat_template), tokenizer
        )
    engine = Engine.start(settings, registry.adapter_paths(), registry.null_adapter_id)
    return LoadedModel(engine, registry, tokenizer, len(tokenizer), longest_token(tokenizer), tool_parsing)


def tool_parser_name(settings: Settings, chat_template: str | None) -> str:
    """`--tool-call-parser`, else the default format's parser for a template without a tool format."""
    if settings.tool_call_parser:
        return settings.tool_call_parser
    if chat_template and tool_prompt.template_has_tool_format(chat_template):
        raise ValueError(
            "--enable-auto-tool-choice: this model's chat template has its own tool format; name the parser "
            "that reads it with --tool-call-parser (for example hermes, llama3_json, mistral, pythonic)"
        )
    return tool_prompt.DEFAULT_TOOL_PARSER


def create_app(
    settings: Settings,
    load: ModelLoader = load_model,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the app; the model loads when the app's lifespan starts.

    `load` is vLLM by default; fast tests pass a scripted engine. `on_fatal` lets the CLI stop the process,
    non-zero, when the model cannot load or the engine dies later (a crash-looping pod, a container restart,
    is the signal supervisors understand); tests leave it unset and read `/health` instead. Raises
    `ValueError` for an unusable keys file.
    """
    keyring = None if settings.no_auth else KeyRing.load(settings.api_keys, settings.api_keys_file)
    admin_keyring = KeyRing.load(settings.admin_api_keys, None, prefix="admin") if settings.admin_api_keys else None
    settings.read_chat_template()  # a missing --chat-template file is a configuration error, before loading
    if settings.tool_call_parser:
        from service.engine.tool_parsers import parser_names  # vLLM's registry of parsers

        if settings.tool_call_parser not in parser_names():
            raise ValueError(
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


async def load_and_prepare(load: ModelLoader, settings: Settings) -> LoadedModel:
    """Load the model in a worker thread, then load the start-up adapters into the engine on this loop."""
    model = await asyncio.to_thread(load, settings)
    try:
        await preload_adapters(model)
    except BaseException:
        model.engine.shutdown()  # nothing will be published: the engine must not outlive the failed load
        raise
    return model


async def preload_adapters(model: LoadedModel) -> None:
    """`--lora-modules` adapters go through the engine's `add_lora` before the first request, as runtime ones
    do: vLLM would otherwise load each on its first request, and one it refuses there ends the engine for every
    request. A refusal fails the start with vLLM's reason instead. (On this loop: vLLM's client binds its
    utility calls to the loop that makes the first one.)"""
    for served in model.registry:
        if served.adapter is not None:
            try:
                await model.engine.add_adapter(served.adapter)
            except AdapterRejected as exc:
                raise AdapterError(f"adapter '{served.name}': {exc.message}") from None


def _on_loaded(
    context: AppContext, task: asyncio.Task, on_fatal: Callable[[BaseException], None] | None
) -> list[asyncio.Task]:
    """Publish the loaded model (or the load error); returns the background tasks it started."""
    if task.cancelled():
        return []
    error = task.exception()
    if error is not None:
        context.lifecycle.load_error = f"model failed to load: {error}"
        logger.error(context.lifecycle.load_error, exc_info=error)
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
