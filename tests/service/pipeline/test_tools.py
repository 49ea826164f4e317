"""Tool calling through the real service: `auto` on a model fine-tuned to call (read by vLLM's hermes parser),
the OpenAI rules on top of it (finish reasons, ids, `{}` arguments, `parallel_tool_calls`), every bad request
a 400 naming its field, and the readers themselves.

Forced choices (`required`, named) on random weights are tested with the client libraries in test_clients.py.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from service.api.schemas.chat import ChatCompletionRequest
from service.pipeline.tools import NamedCallReader, RequiredCallsReader, ToolCallPolicy
from tests.fixtures.tool_model import CASES, TOOLS, target_ids
from tests.service.conftest import API_KEY, BASE

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

MODEL = "tool"


@pytest.fixture(scope="module")
def tools_client(tool_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tool_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, case: str, **kw):
    kw.setdefault("max_tokens", 160)
    return client.chat.completions.create(model=MODEL, messages=CASES[case].messages, tools=TOOLS, temperature=0, **kw)


def calls_of(message) -> list[tuple[str, dict]]:
    return [(call.function.name, json.loads(call.function.arguments)) for call in message.tool_calls or []]


@pytest.mark.parametrize("case", ["weather", "parallel", "time"])
def test_auto_reports_the_calls_the_model_wrote(tools_client, case: str):
    choice = ask(tools_client, case).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert calls_of(choice.message) == list(CASES[case].calls)
    ids = [call.id for call in choice.message.tool_calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", ["hello", "result"])
def test_auto_leaves_prose_as_content(tools_client, case: str):
    choice = ask(tools_client, case).choices[0]
    assert (choice.finish_reason, choice.message.content, choice.message.tool_calls) == (
        "stop",
        CASES[case].target,
        None,
    )


def test_parallel_tool_calls_false_reports_one_call(tools_client):
    choice = ask(tools_client, "parallel", parallel_tool_calls=False).choices[0]
    assert calls_of(choice.message) == [CASES["parallel"].calls[0]]
    with tools_client.chat.completions.stream(
        model=MODEL, messages=CASES["parallel"].messages, tools=TOOLS, temperature=0, parallel_tool_calls=False
    ) as stream:
        streamed = stream.get_final_completion().choices[0]
    assert calls_of(streamed.message) == [CASES["parallel"].calls[0]]


def test_length_wins_over_tool_calls(tool_server, tools_client, tool_model):
    """Cut inside the call: `length`, and the half-written call is not reported as one (vLLM #58228)."""
    tokenizer = AutoTokenizer.from_pretrained(tool_model)
    cut = len(target_ids(tokenizer, CASES["weather"].target)) - 4
    choice = ask(tools_client, "weather", max_tokens=cut).choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls is None
    assert choice.message.content.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": ')
    body = {"model": MODEL, "messages": CASES["weather"].messages, "tools": TOOLS, "max_tokens": cut, "stream": True}
    r = httpx.post(f"{tool_server.url}/v1/chat/completions", json={**body, "temperature": 0}, timeout=120)
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["length"]


def test_streamed_calls_have_openai_shape(tool_server):
    """Role chunk; per call an opening delta (id, type, name, arguments "") then fragments; a finish-only chunk."""
    body = {
        "model": MODEL, "messages": CASES["parallel"].messages, "tools": TOOLS, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    r = httpx.post(f"{tool_server.url}/v1/chat/completions", json=body, timeout=120)
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    finish = chunks[-2]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == "tool_calls"
    arguments: dict[int, str] = {}
    for chunk in chunks[1:-2]:
        (call,) = chunk["choices"][0]["delta"]["tool_calls"]
        if call["index"] not in arguments:
            assert set(call) == {"index", "id", "type", "function"} and call["function"]["arguments"] == ""
            assert call["type"] == "function" and call["function"]["name"] == "get_weather"
            arguments[call["index"]] = ""
        else:
            assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
            arguments[call["index"]] += call["function"]["arguments"]
    assert [json.loads(arguments[i]) for i in sorted(arguments)] == [args for _, args in CASES["parallel"].calls]


def test_empty_arguments_are_streamed_as_an_object(tools_client):
    """A tool without parameters: `{}` arrives in the stream, not nothing (vLLM #28806)."""
    with tools_client.chat.completions.stream(
        model=MODEL, messages=CASES["time"].messages, tools=TOOLS, temperature=0
    ) as stream:
        choice = stream.get_final_completion().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [("get_time", "{}")]


def test_auto_with_a_json_answer_can_still_call(tools_client):
    """`auto` plus a JSON response_format (the Agents SDK's output_type): calls or the JSON answer, not only JSON."""
    answer = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    choice = ask(tools_client, "weather", response_format=answer).choices[0]
    assert calls_of(choice.message) == list(CASES["weather"].calls)
    prose = ask(tools_client, "hello", response_format=answer, max_tokens=24).choices[0]
    assert prose.message.tool_calls or prose.message.content.startswith(("{", "<tool_call>"))  # never "Hello!"


def test_tool_choice_none_shows_no_tools(tools_client):
    """`none`: the tools are not in the prompt, so the model that calls on sight answers in prose."""
    choice = ask(tools_client, "weather", tool_choice="none", max_tokens=16).choices[0]
    assert choice.message.tool_calls is None


def test_responses_api_streams_the_auto_call(tools_client):
    flat = [{"type": "function", **tool["function"]} for tool in TOOLS]
    events = list(
        tools_client.responses.create(
            model=MODEL, input=CASES["weather"].messages, tools=flat, temperature=0, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    (item,) = events[-1].response.output
    assert (item.type, item.name, json.loads(item.arguments)) == ("function_call", "get_weather", {"city": "Tokyo"})
    assert events[-1].response.usage.output_tokens > 0


def test_tool_metrics_count_calls(tool_server, tools_client):
    ask(tools_client, "weather")
    metrics = httpx.get(f"{tool_server.url}/metrics").text
    (line,) = [m for m in metrics.splitlines() if m.startswith('tsumugi_tool_call_responses_total{model="tool"}')]
    assert float(line.split()[-1]) >= 1


WEATHER = TOOLS[0]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}}
USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": []}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": 3}}}
                ]
            },
            "tools[0].function.parameters",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"messages": [USER, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]}, "messages[1].tool_call_id"),
        ({"messages": [USER, {"role": "tool", "content": "x"}]}, "messages[1].tool_call_id"),
        (
            {
                "messages": [
                    USER,
                    {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{"}}]},
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logit_bias": {"5": 1}}, "logit_bias"),
        ({"functions": [WEATHER["function"]]}, "functions"),
        ({"tools": [WEATHER], "tool_choice": "required", "logprobs": True}, "logprobs"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
        ({"no_such_field": 1}, "no_such_field"),
        ({"tools": [WEATHER]}, "tool_choice"),  # auto (the default with tools) on a server without a parser
    ],
)
def test_bad_tool_requests_are_400_naming_the_field(server, fields: dict, param: str | None):
    body = {"model": BASE, "messages": [USER], **fields}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    else:
        assert error["param"].startswith("messages[0].content"), error


def test_auto_without_a_parser_names_the_flag(server):
    body = {"model": BASE, "messages": [USER], "tools": [WEATHER], "tool_choice": "auto"}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400 and "--enable-auto-tool-choice" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]}, "input[0].call_id"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"input": []}, "input"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "NQ"}]}, "input[0].arguments"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "array"}}]}, "tools[0].parameters"),
    ],
)
def test_bad_responses_requests_are_400(server, fields: dict, param: str):
    body = {"model": BASE, "input": "hi", **fields}
    r = httpx.post(f"{server.url}/v1/responses", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_tool_history_is_accepted_and_rendered(server):
    """A two-turn loop's second request (calls + results) renders through the template and is answered."""
    messages = [USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}]
    messages.append({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
    body = {"model": BASE, "messages": messages, "max_tokens": 4, "tools": [WEATHER], "tool_choice": "none"}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 20


# ---- the readers, without an engine ---------------------------------------------------------------------


def policy(**fields) -> ToolCallPolicy:
    return ToolCallPolicy.of(ChatCompletionRequest.model_validate({"model": "m", "messages": [USER], **fields}), None)


def test_policy_constraints():
    named = policy(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert named.constraint() == {"type": "object", "properties": {}}
    required = policy(tools=TOOLS, tool_choice="required", parallel_tool_calls=False).constraint()
    assert required["maxItems"] == 1 and len(required["items"]["anyOf"]) == 2
    assert "maxItems" not in policy(tools=TOOLS, tool_choice="required").constraint()
    assert policy(tools=TOOLS).mode == "auto" and policy().mode == "none"
    assert policy(tools=TOOLS, tool_choice="none").rendered_tools() is None


def test_named_reader_streams_fragments_and_keeps_stop():
    reader = NamedCallReader("get_weather")
    first = reader.feed('{"city":', [1])
    assert first.calls[0].openai_shape()["function"] == {"name": "get_weather", "arguments": ""}
    assert first.calls[1].arguments == '{"city":'
    assert reader.finish("stop") == ([], "stop")
    read = NamedCallReader("get_weather").read('{"city":"Tokyo"}', "stop")
    assert read.content is None and read.calls[0].arguments == '{"city":"Tokyo"}' and read.finish_reason == "stop"


def test_named_reader_cut_is_not_a_call():
    read = NamedCallReader("get_weather").read('{"city":"To', "length")
    assert (read.content, read.calls, read.finish_reason) == ('{"city":"To', [], "length")


def test_named_reader_without_output_still_sends_empty_arguments():
    calls, reason = NamedCallReader("get_time").finish("stop")
    assert [c.arguments for c in calls] == ["", "{}"] and reason == "stop"


def test_required_reader():
    text = '[{"name":"get_weather","parameters":{"city":"Tokyo"}},{"name":"get_time","parameters":{}}]'
    read = RequiredCallsReader(parallel=True).read(text, "stop")
    assert [(c.name, c.arguments) for c in read.calls] == [("get_weather", '{"city": "Tokyo"}'), ("get_time", "{}")]
    assert read.finish_reason == "tool_calls"
    assert len(RequiredCallsReader(parallel=False).read(text, "stop").calls) == 1
    assert RequiredCallsReader(parallel=True).read(text[:20], "length").finish_reason == "length"
