"""Adapters: selection by name, their own chat template, and token-for-token isolation in mixed batches.

The server runs with `--max-loras 1`. vLLM 0.32's own CPU path applies the last adapter slot to base-model
requests batched with adapter requests; each request here must get exactly what it gets alone.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from transformers import AutoTokenizer

from tests.fixtures.adapters import ALPACA_JA_TEMPLATE
from tests.service.conftest import API_KEY, BASE

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

QUESTIONS = ["Hello", "What is the capital of France?", "日本の首都は?", "summarise this paragraph"]


# Batched and solo runs may differ in float rounding, never by this much; another adapter moves them far more.
LOGPROB_TOLERANCE = 1e-3


async def chat(client, model: str, question: str, max_tokens: int = 12) -> list[tuple[str, float]]:
    """Greedy output token by token, each as (token text, log-probability).

    The API exposes no token ids, and on this byte-level tokenizer many tokens (pieces of one multi-byte
    character) all decode to "", so text alone cannot tell them apart: a token is identified by its text and
    its log-probability, which two different greedy picks could only share at an exact tie."""
    response = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        logprobs=True,
        extra_body={"ignore_eos": True},
    )
    return [(entry.token, entry.logprob) for entry in response.choices[0].logprobs.content]


def same_tokens(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    """Token for token: same length, same text and (within rounding) the same log-probability everywhere."""
    return len(a) == len(b) and all(
        text_a == text_b and abs(logprob_a - logprob_b) <= LOGPROB_TOLERANCE
        for (text_a, logprob_a), (text_b, logprob_b) in zip(a, b, strict=True)
    )


def test_adapters_change_output(client):
    outputs = {
        model: client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=12, temperature=0,
            extra_body={"ignore_eos": True},
        ).choices[0].message.content
        for model in (BASE, "ada", "ja")
    }  # fmt: skip
    assert len(set(outputs.values())) == 3, outputs


def test_mixed_batches_match_solo_outputs_token_for_token(server):
    async def run() -> tuple[dict, list]:
        # Made and closed inside this loop: a client left to the garbage collector closes its connections
        # on a loop that has ended, failing whichever test is running then.
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as client:
            solo = {}
            for model in (BASE, "ada", "ja"):
                for question in QUESTIONS:
                    solo[model, question] = await chat(client, model, question)
            jobs = [(model, q) for _ in range(3) for q in QUESTIONS for model in (BASE, "ada", "ja")]
            mixed = await asyncio.gather(*(chat(client, m, q) for m, q in jobs))
        return solo, list(zip(jobs, mixed, strict=True))

    solo, mixed = asyncio.run(run())
    wrong = [(job, out, solo[job]) for job, out in mixed if not same_tokens(out, solo[job])]
    assert not wrong, f"{len(wrong)}/{len(mixed)} mixed requests differ from solo: {wrong[:3]}"


def test_adapter_chat_uses_its_own_template(client, tiny_model):
    """'ja' chat equals a raw completion of the Alpaca-ja prompt; 'ada' chat uses the base template."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = [{"role": "user", "content": "富士山について"}]
    for model, template in (("ja", ALPACA_JA_TEMPLATE), ("ada", None)):
        prompt = tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        raw = client.completions.create(
            model=model, prompt=ids, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
        )
        via_chat = client.chat.completions.create(
            model=model, messages=messages, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
        )
        assert via_chat.choices[0].message.content == raw.choices[0].text, model
        assert via_chat.usage.prompt_tokens == len(ids)
