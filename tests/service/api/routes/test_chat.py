"""POST /v1/chat/completions through the official openai client, against the real engine."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.service.conftest import API_KEY, BASE

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

HELLO = [{"role": "user", "content": "Hello, how are you today?"}]


def greedy(client: openai.OpenAI, model: str = BASE, messages=HELLO, **kw):
    return client.chat.completions.create(model=model, messages=messages, temperature=0, **kw)


def test_non_streaming_has_usage_and_length_finish(client):
    response = greedy(client, max_tokens=8, extra_body={"ignore_eos": True})
    choice = response.choices[0]
    assert response.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 8
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + 8


def test_max_completion_tokens_is_honoured(client):
    response = greedy(client, max_completion_tokens=3, extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 3


def test_streaming_matches_non_streaming(client):
    full = greedy(client, max_tokens=12, extra_body={"ignore_eos": True})
    chunks = list(
        greedy(
            client,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_stream_ends_with_done_over_raw_http(server):
    body = {"model": BASE, "messages": HELLO, "max_tokens": 4, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_stop_string_ends_generation(client):
    reference = greedy(client, max_tokens=20, extra_body={"ignore_eos": True}).choices[0].message.content
    # Stop on a piece of the text the model produces anyway: output must end before it.
    stop = reference[5:8]
    response = greedy(client, max_tokens=20, stop=[stop], extra_body={"ignore_eos": True})
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.content == reference[: reference.index(stop)]


def test_n_choices_and_seed_reproducible(client):
    kwargs = dict(model=BASE, messages=HELLO, max_tokens=10, n=3, temperature=1.0, seed=1234)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    other = client.chat.completions.create(**{**kwargs, "seed": 99})
    assert [c.message.content for c in other.choices] != [c.message.content for c in first.choices]


def test_sampling_fields_accepted(client):
    response = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "system", "content": "Be brief."}, *HELLO],
        max_tokens=5,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        user="user-42",
        extra_body={"top_k": 20, "min_tokens": 2, "repetition_penalty": 1.1, "ignore_eos": True},
    )
    assert response.usage.completion_tokens == 5


def sampled(client: openai.OpenAI, **fields) -> str:
    """16 tokens at temperature 1 with a fixed seed (the random tiny model spreads them over many tokens)."""
    response = client.chat.completions.create(
        model=BASE, messages=HELLO, max_tokens=16, temperature=1.0, extra_body={"ignore_eos": True, **fields}
    )
    return response.choices[0].message.content


@pytest.mark.parametrize("restriction", [{"top_k": 1}, {"top_p": 1e-6}], ids=["top_k", "top_p"])
@pytest.mark.parametrize("seed", [0, 1])
def test_keeping_only_the_top_token_samples_the_greedy_output(client, restriction, seed):
    """Reaches the engine: with it, sampling is greedy; without it, the same seed samples something else."""
    reference = greedy(client, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].message.content
    assert sampled(client, seed=seed) != reference  # so a dropped restriction cannot pass
    assert sampled(client, seed=seed, **restriction) == reference


@pytest.mark.parametrize(
    "penalty",
    [{"repetition_penalty": 1.5}, {"presence_penalty": 2.0}, {"frequency_penalty": 2.0}],
    ids=["repetition", "presence", "frequency"],
)
def test_penalties_change_the_greedy_output(client, penalty):
    """Greedy output of the tiny model repeats itself within 16 tokens; a penalty that reaches the engine breaks
    that repetition (measured: each of these changes the text from the 7th token on)."""
    plain = greedy(client, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].message.content
    penalised = greedy(client, max_tokens=16, extra_body={"ignore_eos": True, **penalty})
    assert penalised.choices[0].message.content != plain


def test_logprobs_and_top_logprobs(client):
    response = greedy(client, max_tokens=4, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = response.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)
    assert len(content) == response.usage.completion_tokens


def test_json_object_response_format(client):
    response = greedy(client, max_tokens=40, response_format={"type": "json_object"})
    text = response.choices[0].message.content
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.lstrip().startswith("{")


def test_json_schema_response_format(client):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    response = greedy(
        client,
        max_tokens=30,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    text = response.choices[0].message.content
    # A random model may spend its budget on grammar-legal whitespace; what it writes must follow the schema.
    assert "".join(text.split()).startswith('{"ok":'), text
    if response.choices[0].finish_reason == "stop":
        assert json.loads(text) in ({"ok": True}, {"ok": False})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": BASE}, "messages"),
        ({"model": BASE, "messages": []}, "messages"),
        ({"model": BASE, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": BASE, "messages": HELLO, "temperature": 5}, "temperature"),
        ({"model": BASE, "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": BASE, "messages": HELLO, "n": 0}, "n"),
        ({"model": BASE, "messages": HELLO, "top_logprobs": 2}, None),
        ({"model": BASE, "messages": HELLO, "stop": [""]}, None),
        ({"model": BASE, "messages": HELLO, "response_format": {"type": "json_schema"}}, None),
    ],
)
def test_invalid_fields_are_400_envelopes(server, body, param):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


def test_malformed_json_body_is_400(server):
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and "error" in r.json()


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        greedy(client, model="no-such-model", max_tokens=2)
    assert info.value.body["code"] == "model_not_found"


def test_context_overflow_is_400_with_numbers(client):
    with pytest.raises(openai.BadRequestError) as info:
        greedy(client, max_tokens=600)
    message = info.value.body["message"]
    assert "512" in message and "600" in message
    assert info.value.body["code"] == "context_length_exceeded"


def test_prompt_alone_over_context_is_400(client):
    long = [{"role": "user", "content": "capital of France " * 400}]
    with pytest.raises(openai.BadRequestError) as info:
        greedy(client, messages=long)
    assert "512" in info.value.body["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_missing_or_bad_api_key_is_401(server, headers):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": BASE, "messages": HELLO}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_openai_client_with_wrong_key_raises_authentication_error(server):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=BASE, messages=HELLO, max_tokens=2)
