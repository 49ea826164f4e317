"""Turn a request into prompt token ids: chat messages through a chat template, or completion prompts as is.

Chat prompts are rendered to text by the model's (or adapter's) template, then tokenised without adding
special tokens: the template already writes BOS and role markers, and adding them twice changes the output.
"""

from __future__ import annotations

from collections.abc import Sequence

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from service.errors import InvalidRequest
from service.protocol import ChatMessage


def render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage], chat_template: str | None
) -> list[int]:
    """Token ids of `messages` rendered with `chat_template` (the tokenizer's own when None)."""
    conversation = [{"role": m.role, "content": m.text()} for m in messages]
    template = chat_template or tokenizer.chat_template
    if template is None:
        raise InvalidRequest("This model has no chat template; use /v1/completions.", param="messages")
    try:
        text = tokenizer.apply_chat_template(
            conversation, chat_template=template, add_generation_prompt=True, tokenize=False
        )
    except TemplateError as exc:
        raise InvalidRequest(f"messages: the chat template rejected them: {exc}", param="messages") from exc
    return tokenizer.encode(text, add_special_tokens=False)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[int], vocab_size: int) -> list[int]:
    """Token ids for a completion prompt given as text or as ids (ids are checked against the vocabulary)."""
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequest("prompt: must not be empty", param="prompt")
        return tokenizer.encode(prompt, add_special_tokens=True)
    if not prompt:
        raise InvalidRequest("prompt: token list must not be empty", param="prompt")
    if any(token < 0 or token >= vocab_size for token in prompt):
        raise InvalidRequest(f"prompt: token ids must be in [0, {vocab_size})", param="prompt")
    return prompt
