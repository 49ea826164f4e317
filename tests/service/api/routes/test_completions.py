"""POST /v1/completions: text, token-id and batched prompts, streaming, echo, logprobs."""

from __future__ import annotations

import openai
import pytest

from tests.service.conftest import BASE

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

PROMPT = "The capital of France is"


def complete(client: openai.OpenAI, **kw):
    kw.setdefault("extra_body", {"ignore_eos": True})
    kw.setdefault("temperature", 0)
    return client.completions.create(model=BASE, **kw)


def test_default_max_tokens_is_16(client):
    response = complete(client, prompt=PROMPT)
    assert response.object == "text_completion"
    assert response.usage.completion_tokens == 16
    assert response.choices[0].finish_reason == "length"


def test_batched_prompts_keep_order(client):
    a = complete(client, prompt="Hello", max_tokens=6).choices[0].text
    b = complete(client, prompt=PROMPT, max_tokens=6).choices[0].text
    batch = complete(client, prompt=["Hello", PROMPT], max_tokens=6)
    assert [c.index for c in batch.choices] == [0, 1]
    assert [c.text for c in batch.choices] == [a, b]
    assert batch.usage.completion_tokens == 12


def test_token_id_prompt_equals_text_prompt(client, tiny_model):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_model).encode(PROMPT)
    assert complete(client, prompt=ids, max_tokens=6).choices[0].text == (
        complete(client, prompt=PROMPT, max_tokens=6).choices[0].text
    )


def test_streaming_concatenates_to_full_text(client):
    full = complete(client, prompt=PROMPT, max_tokens=10).choices[0].text
    chunks = list(complete(client, prompt=PROMPT, max_tokens=10, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full
    assert chunks[-1].usage.completion_tokens == 10


def test_echo_prepends_prompt(client):
    response = complete(client, prompt=PROMPT, max_tokens=4, echo=True)
    assert response.choices[0].text.startswith(PROMPT)


def test_logprobs(client):
    response = complete(client, prompt=PROMPT, max_tokens=3, logprobs=2)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == 3 and len(logprobs.token_logprobs) == 3
    assert all(len(top) == 2 for top in logprobs.top_logprobs)


def test_n_with_batch(client):
    response = complete(client, prompt=["a", "b"], max_tokens=3, n=2, temperature=1.0, seed=3)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]


@pytest.mark.parametrize("prompt", ["", [], [10**9]])
def test_bad_prompts_are_400(client, prompt):
    with pytest.raises(openai.BadRequestError):
        complete(client, prompt=prompt, max_tokens=2)


def test_streaming_echo_opens_with_the_prompt(client):
    chunks = list(complete(client, prompt=PROMPT, max_tokens=3, echo=True, stream=True))
    assert chunks[0].choices[0].text == PROMPT
