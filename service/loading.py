"""Loading the model: check the adapters, load the tokenizer, start the engine, then load the start-up adapters.

Runs once, from the app's lifespan: `load_model` in a worker thread (vLLM blocks while it loads weights and
profiles memory), `preload_adapters` back on the event loop. What the operator got wrong (an adapter
directory, a chat template with its own tool format and no parser named) is a `StartupError`: one line, exit 2.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.adapters.registry import AdapterError, ModelRegistry
from service.config import Settings
from service.context import LoadedModel
from service.errors import AdapterRejected, StartupError
from service.pipeline.prompts import longest_token
from tsumugi import tool_prompt

ModelLoader = Callable[[Settings], LoadedModel]


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
        raise StartupError(
            "--enable-auto-tool-choice: this model's chat template has its own tool format; name the parser "
            "that reads it with --tool-call-parser (for example hermes, llama3_json, mistral, pythonic)"
        )
    return tool_prompt.DEFAULT_TOOL_PARSER


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
