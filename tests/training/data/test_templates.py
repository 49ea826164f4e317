"""The chat template an adapter carries renders chat requests exactly as its training prompts were rendered."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from training.data.examples import adapter_chat_template, render
from training.data.records import AlpacaRecord, ChatRecord
from training.data.templates import ALPACA_EN, ALPACA_JA, Message


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def apply(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def test_japanese_alpaca_prompt_text():
    assert ALPACA_JA.prompt("地鎮祭とは？") == (
        "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"
        "\n\n### 指示:\n地鎮祭とは？\n\n### 応答:\n"
    )
    with_input = ALPACA_JA.prompt("県庁所在地は？", "岩手県")
    assert with_input.startswith("以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。")
    assert with_input.endswith("### 指示:\n県庁所在地は？\n\n### 入力:\n岩手県\n\n### 応答:\n")


@pytest.mark.parametrize("template", [ALPACA_JA, ALPACA_EN], ids=lambda t: t.name)
def test_single_user_message_renders_as_training_prompt(tokenizer, template):
    record = AlpacaRecord("地鎮祭とは何ですか？", "", "儀式です。", "x")
    trained = render(record, template.name, tokenizer)
    served = apply(
        tokenizer, adapter_chat_template(template.name, tokenizer), [{"role": "user", "content": record.instruction}]
    )
    assert served == trained.prompt
    served_ids = tokenizer(served, add_special_tokens=False).input_ids
    assert served_ids == tokenizer(trained.prompt, add_special_tokens=False).input_ids


def test_system_message_replaces_the_preamble_and_history_is_kept(tokenizer):
    template = ALPACA_JA.chat_template(emit_bos=False)
    messages = [
        {"role": "system", "content": "あなたは日本文化の専門家です。"},
        {"role": "user", "content": "一つ目"},
        {"role": "assistant", "content": "答え"},
        {"role": "user", "content": "二つ目"},
    ]
    rendered = apply(tokenizer, template, messages)
    assert rendered.startswith("あなたは日本文化の専門家です。\n\n### 指示:\n一つ目")
    assert "### 応答:\n答え<|im_end|>" in rendered
    assert rendered.endswith("### 指示:\n二つ目\n\n### 応答:\n")
    python_twin = ALPACA_JA.render_messages(
        [Message(m["role"], m["content"]) for m in messages], True, bos="", eos=tokenizer.eos_token
    )
    assert rendered == python_twin
    chat_record = ChatRecord(
        tuple(Message(m["role"], m["content"]) for m in [*messages, {"role": "assistant", "content": "x"}]), "s"
    )
    assert render(chat_record, "alpaca-ja", tokenizer).prompt == rendered


def test_bos_is_emitted_by_the_template_when_the_model_needs_it(tokenizer):
    template = ALPACA_JA.chat_template(emit_bos=True)
    rendered = apply(tokenizer, template, [{"role": "user", "content": "q"}])
    assert rendered.startswith(tokenizer.bos_token + "以下は")


def test_chat_template_mode_uses_the_model_template(tokenizer):
    record = AlpacaRecord("q", "in", "a", "x")
    example = render(record, "chat", tokenizer)
    assert example.prompt == "<|im_start|>user\nq\n\nin<|im_end|>\n<|im_start|>assistant\n"
    assert example.response == "a<|im_end|>\n"
    assert adapter_chat_template("chat", tokenizer) == tokenizer.chat_template
