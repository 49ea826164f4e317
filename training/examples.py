"""Records → training examples: prompt text, response text, and token ids with a completion mask.

The prompt is tokenised on its own, exactly as the service will tokenise a rendered chat request
(`add_special_tokens=False`; the template itself emits BOS when the model expects one), and the response is
tokenised separately and appended. `completion_mask` is 1 on response tokens only: the loss is computed there.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.data import AlpacaRecord, DataError, Record
from training.templates import Message, alpaca_template


@dataclass(frozen=True)
class RenderedExample:
    prompt: str
    response: str


def bos_text(tokenizer) -> str:
    """The BOS token text if this tokenizer prepends BOS by default (e.g. Llama 3), else ''."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return ""
    ids = tokenizer("a").input_ids
    return tokenizer.bos_token if ids and ids[0] == bos_id else ""


def as_messages(record: Record) -> list[Message]:
    """An Alpaca record as a single-turn conversation (input appended to the instruction)."""
    if isinstance(record, AlpacaRecord):
        user = f"{record.instruction}\n\n{record.input}" if record.input else record.instruction
        return [Message("user", user), Message("assistant", record.output)]
    return list(record.messages)


def render(record: Record, template_name: str, tokenizer) -> RenderedExample:
    """Split one record into the prompt text and the response text the model learns."""
    if template_name == "chat":
        return _render_with_model_template(record, tokenizer)
    template = alpaca_template(template_name)
    bos, eos = bos_text(tokenizer), tokenizer.eos_token
    if isinstance(record, AlpacaRecord):
        prompt = template.prompt(record.instruction, record.input, bos=bos)
        return RenderedExample(prompt=prompt, response=record.output + eos)
    history = list(record.messages[:-1])
    prompt = template.render_messages(history, add_generation_prompt=True, bos=bos, eos=eos)
    return RenderedExample(prompt=prompt, response=record.messages[-1].content + eos)


def _render_with_model_template(record: Record, tokenizer) -> RenderedExample:
    if not tokenizer.chat_template:
        raise DataError("--template chat needs a base model whose tokenizer has a chat template")
    messages = [{"role": m.role, "content": m.content} for m in as_messages(record)]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise DataError(f"{record.source}: the model's chat template does not extend the prompt with the reply")
    return RenderedExample(prompt=prompt, response=full[len(prompt) :])


def tokenize_example(example: RenderedExample, tokenizer, max_length: int) -> dict[str, list[int]]:
    """Token ids and completion mask, truncated to `max_length` tokens."""
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False).input_ids
    response_ids = tokenizer(example.response, add_special_tokens=False).input_ids
    input_ids = (prompt_ids + response_ids)[:max_length]
    completion_mask = ([0] * len(prompt_ids) + [1] * len(response_ids))[:max_length]
    return {"input_ids": input_ids, "completion_mask": completion_mask}


def build_examples(records: list[Record], template_name: str, tokenizer, max_length: int) -> list[dict]:
    """Tokenise every record; a record whose response would be cut off entirely is an error, not a no-op."""
    examples = []
    for record in records:
        tokens = tokenize_example(render(record, template_name, tokenizer), tokenizer, max_length)
        if not any(tokens["completion_mask"]):
            raise DataError(f"{record.source}: the prompt alone is longer than max_length={max_length} tokens")
        examples.append(tokens)
    return examples


def adapter_chat_template(template_name: str, tokenizer) -> str:
    """The chat template an output directory carries so the service prompts it as it was trained."""
    if template_name == "chat":
        return tokenizer.chat_template
    return alpaca_template(template_name).chat_template(emit_bos=bool(bos_text(tokenizer)))
