"""The fields vllm-router adds to chat and text completions: accepted at its values, refused at any other.

tests/service/test_router.py shows the router's requests answered end to end; these are the edges, fast.
"""

from __future__ import annotations

import pytest

from tests.service.fake_engine import CHAT, running_app
from tests.service.fake_engine import fake_app as make_app

pytestmark = pytest.mark.anyio
COMPLETION = {"model": CHAT["model"], "prompt": "hi", "max_tokens": 8}
ROUTER_COMMON = {"no_stop_trim": False, "skip_special_tokens": True, "return_hidden_states": False}
ROUTER_CHAT = {
    **ROUTER_COMMON,
    "continue_final_message": False,
    "separate_reasoning": True,
    "stream_reasoning": True,
    "include_reasoning": True,
}


async def test_the_routers_fields_at_its_values_are_answered(engine, tokenizer_dir):
    async with running_app(make_app(engine, tokenizer_dir)) as client:
        chat = await client.post("/v1/chat/completions", json={**CHAT, **ROUTER_CHAT})
        completion = await client.post("/v1/completions", json={**COMPLETION, **ROUTER_COMMON})
    assert chat.status_code == 200, chat.text
    assert completion.status_code == 200, completion.text


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/chat/completions", "no_stop_trim", True),
        ("/v1/chat/completions", "skip_special_tokens", False),
        ("/v1/chat/completions", "continue_final_message", True),
        ("/v1/chat/completions", "separate_reasoning", False),
        ("/v1/completions", "return_hidden_states", True),
        ("/v1/completions", "continue_final_message", False),  # a chat field: unknown to text completions
    ],
)
async def test_any_other_value_is_a_400_naming_the_field(engine, tokenizer_dir, path, field, value):
    body = {**(CHAT if "chat" in path else COMPLETION), field: value}
    async with running_app(make_app(engine, tokenizer_dir)) as client:
        response = await client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field
