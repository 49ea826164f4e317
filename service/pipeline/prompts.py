"""Turn a request into prompt token ids: chat messages through a chat template, or completion prompts as is.

Chat prompts are rendered to text by the model's (or adapter's) template, then tokenised without adding
special tokens: the template already writes BOS and role markers, and adding them twice changes the output.

Work here is bounded and kept off the event loop: a prompt with more characters than could ever fit the
context window is refused before it is tokenised (`LoadedModel.max_prompt_chars`), and a long prompt is
rendered and tokenised in a worker thread, so one large request never holds up `/health` or other streams.
Short prompts, nearly all of them, are tokenised inline: a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from service.api.schemas.chat import ChatMessage
from service.errors import InvalidRequest
from tsumugi import tool_prompt

# Prompts longer than this many characters are tokenised in a worker thread (about 1 ms of work inline).
INLINE_CHARS = 8192


def longest_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Characters in the longest vocabulary entry: byte-level and SentencePiece vocabularies spell a token
    with at least one character per character it decodes to, so this bounds characters per token."""
    return max(map(len, tokenizer.get_vocab()), default=1)


async def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[ChatMessage],
    tools: list[dict[str, Any]] | None,
    chat_template: str | None,
    max_chars: int,
) -> list[int]:
    """Token ids of `messages` (and the `tools` the model may call) rendered with `chat_template` (the
    tokenizer's own when None). Tools, calls and tool results are written by the template itself when it has
    a tool format, else in the default one (`tsumugi/tool_prompt.py`, the format training uses too)."""
    shaped = [m.openai_shape() for m in messages]
    num_chars = sum(len(m.text()) for m in messages)
    if tools or any(m.tool_calls for m in messages):
        num_chars += len(json.dumps(tools or [])) + sum(len(json.dumps(m.get("tool_calls", ""))) for m in shaped)
    _check_length(num_chars, max_chars, "messages")
    template = chat_template or tokenizer.chat_template
    if template is None:
        raise InvalidRequest("This model has no chat template; use /v1/completions.", param="messages")
    conversation, template_tools = tool_prompt.conversation_for_template(shaped, tools, template)
    if num_chars <= INLINE_CHARS:
        return _render(tokenizer, conversation, template_tools, template)
    return await asyncio.to_thread(_render, tokenizer, conversation, template_tools, template)


def _render(
    tokenizer: PreTrainedTokenizerBase, conversation: list[dict], tools: list[dict] | None, template: str
) -> list[int]:
    try:
        text = tokenizer.apply_chat_template(
            conversation, tools=tools, chat_template=template, add_generation_prompt=True, tokenize=False
        )
    except TemplateError as exc:
        raise InvalidRequest(f"messages: the chat template rejected them: {exc}", param="messages") from exc
    return tokenizer.encode(text, add_special_tokens=False)


async def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | list[int]], vocab_size: int, max_chars: int
) -> list[list[int]]:
    """Token ids for completion prompts given as text or as ids (ids are checked against the vocabulary)."""
    for prompt in prompts:
        _check_prompt(prompt, vocab_size, max_chars)
    if sum(len(p) for p in prompts if isinstance(p, str)) <= INLINE_CHARS:
        return [_encode(tokenizer, p) for p in prompts]
    return await asyncio.to_thread(lambda: [_encode(tokenizer, p) for p in prompts])


def _check_prompt(prompt: str | list[int], vocab_size: int, max_chars: int) -> None:
    if not prompt:
        raise InvalidRequest("prompt: must not be empty", param="prompt")
    if isinstance(prompt, str):
        _check_length(len(prompt), max_chars, "prompt")
    elif any(token < 0 or token >= vocab_size for token in prompt):
        raise InvalidRequest(f"prompt: token ids must be in [0, {vocab_size})", param="prompt")


def _encode(tokenizer: PreTrainedTokenizerBase, prompt: str | list[int]) -> list[int]:
    return tokenizer.encode(prompt, add_special_tokens=True) if isinstance(prompt, str) else prompt


def _check_length(num_chars: int, max_chars: int, param: str) -> None:
    if num_chars > max_chars:
        raise InvalidRequest(
            f"{param}: {num_chars} characters cannot fit this model's context window "
            f"(at most {max_chars} characters could); shorten the prompt.",
            param=param,
            code="context_length_exceeded",
        )
