"""Where a validated request enters the pipeline: resolve the model → render the prompt → sampling values →
a running generation. One entry for chat, shared by chat completions and the Responses API (which maps its
request onto chat), and one for text completions; the route then hands the result to its renderer.

Read top to bottom, each function is the request path of ARCHITECTURE.md, one call per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.adapters.resolver import load_on_request
from service.api.schemas.chat import ChatCompletionRequest
from service.api.schemas.completions import CompletionRequest
from service.context import AppContext, LoadedModel
from service.pipeline.call import Call
from service.pipeline.generation import Generation
from service.pipeline.prompts import encode_prompts, render_chat
from service.pipeline.sampling import generation_params
from service.pipeline.tools import ToolCallPolicy, ToolCallReader


@dataclass(frozen=True, slots=True)
class ChatRun:
    """A started chat generation and how its choices' text is read: `readers` (one per choice) turn text into
    tool calls, None when the output is plain text."""

    generation: Generation
    readers: list[ToolCallReader] | None
    count_tool_calls: Callable[[bool, int], None] | None

    def choice_read(self, index: int, called: bool) -> None:
        """Count one finished choice: answered with calls or not, and the calls its reader could not read."""
        if self.readers is not None and self.count_tool_calls is not None:
            self.count_tool_calls(called, self.readers[index].num_parse_failures)


@dataclass(frozen=True, slots=True)
class CompletionRun:
    """A started text-completion generation, with each prompt as text when the request asked for an echo."""

    generation: Generation
    echoed_prompts: list[str] | None


async def start_chat(
    chat: ChatCompletionRequest, endpoint: str, context: AppContext, model: LoadedModel, call: Call
) -> ChatRun:
    """Chat messages (and tools) → a generation running in the engine, its first step already arrived."""
    await load_on_request(context.adapters, context.settings, call.record.tenant, chat.model)
    served = call.record.resolve(model.registry, chat.model)
    tools = ToolCallPolicy.of(chat, model.tool_parsing)
    readers = tools.readers(chat.n)
    prompt = await render_chat(
        model.tokenizer, chat.messages, tools.rendered_tools(), served.chat_template, model.max_prompt_chars
    )
    keep_special = bool(readers and readers[0].keeps_special_tokens)
    params = generation_params(chat, len(prompt), model.max_model_len, tools, keep_special)
    generation = await Generation.start(context, model.engine, served, endpoint, [prompt], [params], call)
    count = context.metrics.tool_call_counter(served.name) if readers else None
    return ChatRun(generation, readers, count)


async def start_completion(
    body: CompletionRequest, context: AppContext, model: LoadedModel, call: Call
) -> CompletionRun:
    """One prompt or a batch (text or token ids) → a generation running in the engine."""
    await load_on_request(context.adapters, context.settings, call.record.tenant, body.model)
    served = call.record.resolve(model.registry, body.model)
    prompts = await encode_prompts(model.tokenizer, body.prompts(), model.vocab_size, model.max_prompt_chars)
    params = [generation_params(body, len(ids), model.max_model_len) for ids in prompts]
    generation = await Generation.start(context, model.engine, served, "completions", prompts, params, call)
    echoed = [p if isinstance(p, str) else model.tokenizer.decode(p) for p in body.prompts()] if body.echo else None
    return CompletionRun(generation, echoed)
