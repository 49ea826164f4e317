"""Records → training examples: the rendered text in pieces, and token ids with a completion mask.

A rendered record is a sequence of pieces, each either context (system, user and tool-result turns, the
template's markup) or a reply the model learns. Each piece is tokenised on its own, exactly as the service
tokenises a rendered chat request (`add_special_tokens=False`; the template itself emits BOS when the model
expects one), and the ids are concatenated. `completion_mask` is 1 on reply tokens only: the loss is there.

Which replies are learned: the output of an Alpaca record, the final assistant message of a chat record, and
every assistant turn of a tool-calling record (the `<tool_call>` text of its calls, and its answers after the
results). Tool-calling records render through `tool_prompt.conversation_for_template`, the function the
service renders requests with, and the chat template the adapter directory carries.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.data.records import AlpacaRecord, ChatRecord, DataError, Record
from training.data.templates import Message, alpaca_template
from tsumugi.tool_prompt import conversation_for_template


@dataclass(frozen=True)
class RenderedExample:
    """A record's text as consecutive `(text, learned)` pieces; at least one piece is learned."""

    pieces: tuple[tuple[str, bool], ...]

    @classmethod
    def of(cls, prompt: str, response: str) -> RenderedExample:
        return cls(((prompt, False), (response, True)))

    @property
    def prompt(self) -> str:
        """Everything before the last learned piece: what the final reply is conditioned on."""
        return "".join(text for text, _ in self.pieces[: self._last_learned()])

    @property
    def response(self) -> str:
        """The final reply (with the template's end-of-turn text)."""
        return "".join(text for text, _ in self.pieces[self._last_learned() :])

    def _last_learned(self) -> int:
        return max(index for index, (_, learned) in enumerate(self.pieces) if learned)


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
    """Split one record into the context text and the reply text(s) the model learns."""
    if isinstance(record, ChatRecord) and record.tools is not None:
        return _render_tool_record(record, adapter_chat_template(template_name, tokenizer), tokenizer)
    if template_name == "chat":
        return _render_with_model_template(record, tokenizer)
    template = alpaca_template(template_name)
    bos, eos = bos_text(tokenizer), tokenizer.eos_token
    if isinstance(record, AlpacaRecord):
        prompt = template.prompt(record.instruction, record.input, bos=bos)
        return RenderedExample.of(prompt, record.output + eos)
    history = list(record.messages[:-1])
    prompt = template.render_messages(history, add_generation_prompt=True, bos=bos, eos=eos)
    return RenderedExample.of(prompt, record.messages[-1].content + eos)


def _render_with_model_template(record: Record, tokenizer) -> RenderedExample:
    if not tokenizer.chat_template:
        raise DataError("--template chat needs a base model whose tokenizer has a chat template")
    messages = [{"role": m.role, "content": m.content} for m in as_messages(record)]
    pieces = _render_turns(messages, None, tokenizer.chat_template, tokenizer, learned=[len(messages) - 1])
    return RenderedExample(_checked(pieces, record))


def _render_tool_record(record: ChatRecord, chat_template: str, tokenizer) -> RenderedExample:
    """Through `tool_prompt`, as the service renders a request with this record's messages and tools."""
    if not chat_template:
        raise DataError("--template chat needs a base model whose tokenizer has a chat template")
    openai_messages = [m.openai() for m in record.messages]
    conversation, tools = conversation_for_template(openai_messages, record.tools, chat_template)
    learned = [index for index, turn in enumerate(conversation) if turn["role"] == "assistant"]
    return RenderedExample(_checked(_render_turns(conversation, tools, chat_template, tokenizer, learned), record))


def _render_turns(
    conversation: list[dict], tools: list[dict] | None, chat_template: str, tokenizer, learned: list[int]
) -> list[tuple[str, bool]] | None:
    """Pieces of the rendered `conversation`: each `learned` assistant turn is the text its message adds to the
    rendering of the turns before it plus the generation prompt; the context is the rest. `None` when a longer
    conversation does not render as an extension of a shorter one (the template rewrites history)."""

    def apply(turns: list[dict], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            turns, tools=tools, chat_template=chat_template, add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )  # fmt: skip

    pieces, done = [], ""
    for index in learned:
        prompt = apply(conversation[:index], add_generation_prompt=True)
        full = apply(conversation[: index + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            return None
        pieces += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    return pieces


def _checked(pieces: list[tuple[str, bool]] | None, record: Record) -> tuple[tuple[str, bool], ...]:
    if pieces is None:
        raise DataError(f"{record.source}: the model's chat template does not extend the prompt with the reply")
    return tuple(pieces)


def tokenize_example(example: RenderedExample, tokenizer, max_length: int) -> dict[str, list[int]]:
    """Token ids and completion mask, truncated to `max_length` tokens."""
    input_ids, completion_mask = [], []
    for text, learned in example.pieces:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        input_ids += ids
        completion_mask += [int(learned)] * len(ids)
    return {"input_ids": input_ids[:max_length], "completion_mask": completion_mask[:max_length]}


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
