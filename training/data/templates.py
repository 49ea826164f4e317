"""Prompt formats: how a record becomes the prompt text the model sees and the response text it learns.

Two families:

* Alpaca (`alpaca-ja`, `alpaca-en`): a preamble sentence, then `### 指示:` / `### 入力:` / `### 応答:` blocks
  (English: Instruction / Input / Response). Records with an `input` use the "with input" preamble.
* `chat`: the base model's own chat template (`tokenizer.apply_chat_template`).

A trained adapter must be prompted exactly as it was trained, and the service renders chat requests with the
adapter directory's chat template. So every Alpaca format also has a Jinja chat template
(`AlpacaTemplate.chat_template`) that reproduces the training prompt for chat messages:

* a `system` message replaces the preamble sentence (without one, the default preamble is used);
* each `user` message becomes an instruction block with an empty input;
* each `assistant` message becomes a response block ending in EOS (multi-turn history);
* `add_generation_prompt` opens the final response block.

So a single user message renders byte-for-byte as the training prompt of an Alpaca record with that
instruction and an empty input. `render_messages` is the same mapping in Python; tests hold the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolCall:
    """One function call of an assistant turn, in OpenAI's shape: `arguments` is the JSON text of an object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One chat turn; assistant turns may carry `tool_calls`, and `tool` turns the `tool_call_id` they answer."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def openai(self) -> dict:
        """The turn as an OpenAI chat message, the shape `tool_prompt` and the service take."""
        turn: dict = {"role": self.role, "content": self.content}
        if self.tool_calls:
            turn["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            turn["tool_call_id"] = self.tool_call_id
        return turn


@dataclass(frozen=True)
class AlpacaTemplate:
    """One Alpaca-style prompt format; `bos` is the BOS text to emit first ('' when the model has none)."""

    name: str
    preamble: str
    preamble_with_input: str
    instruction_header: str
    input_header: str
    response_header: str

    def prompt(self, instruction: str, input_text: str = "", system: str | None = None, bos: str = "") -> str:
        """The text before the response: what the model is conditioned on."""
        if input_text:
            preamble = system if system is not None else self.preamble_with_input
            return (
                f"{bos}{preamble}\n\n{self.instruction_header}\n{instruction}\n\n"
                f"{self.input_header}\n{input_text}\n\n{self.response_header}\n"
            )
        preamble = system if system is not None else self.preamble
        return f"{bos}{preamble}\n\n{self.instruction_header}\n{instruction}\n\n{self.response_header}\n"

    def render_messages(self, messages: list[Message], add_generation_prompt: bool, bos: str, eos: str) -> str:
        """Python twin of `chat_template`: same output for the same messages."""
        preamble = self.preamble
        for message in messages:
            if message.role == "system":
                preamble = message.content
        parts = [bos, preamble]
        for message in messages:
            if message.role == "user":
                parts.append(f"\n\n{self.instruction_header}\n{message.content}\n\n")
            elif message.role == "assistant":
                parts.append(f"{self.response_header}\n{message.content}{eos}")
        if add_generation_prompt:
            parts.append(f"{self.response_header}\n")
        return "".join(parts)

    def chat_template(self, emit_bos: bool) -> str:
        """A Jinja chat template rendering messages into this prompt format (see module docstring)."""
        bos = "{{ bos_token }}" if emit_bos else ""
        return (
            f"{bos}{{%- set ns = namespace(preamble={_jinja_str(self.preamble)}) -%}}"
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'system' -%}{%- set ns.preamble = message['content'] -%}{%- endif -%}"
            "{%- endfor -%}"
            "{{ ns.preamble }}"
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}"
            f"{{{{ {_jinja_str(chr(10) * 2 + self.instruction_header + chr(10))} + message['content'] + "
            f"{_jinja_str(chr(10) * 2)} }}}}"
            "{%- elif message['role'] == 'assistant' -%}"
            f"{{{{ {_jinja_str(self.response_header + chr(10))} + message['content'] + eos_token }}}}"
            "{%- endif -%}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {_jinja_str(self.response_header + chr(10))} }}}}"
            "{%- endif -%}"
        )


def _jinja_str(text: str) -> str:
    """A Jinja string literal for `text` (Jinja unescapes Python-style escapes inside quotes)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


ALPACA_JA = AlpacaTemplate(
    name="alpaca-ja",
    preamble="以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。",
    preamble_with_input=(
        "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
    ),
    instruction_header="### 指示:",
    input_header="### 入力:",
    response_header="### 応答:",
)

ALPACA_EN = AlpacaTemplate(
    name="alpaca-en",
    preamble=(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    ),
    preamble_with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request."
    ),
    instruction_header="### Instruction:",
    input_header="### Input:",
    response_header="### Response:",
)

ALPACA_TEMPLATES = {t.name: t for t in (ALPACA_JA, ALPACA_EN)}
TEMPLATE_NAMES = (*ALPACA_TEMPLATES, "chat")


def alpaca_template(name: str) -> AlpacaTemplate:
    if name not in ALPACA_TEMPLATES:
        # config and --template offer only known names: an unknown one here is our bug
        raise ValueError(f"unknown Alpaca template {name!r}; choose one of {sorted(ALPACA_TEMPLATES)}")
    return ALPACA_TEMPLATES[name]
