"""Client libraries against the real service (issue 13): tools, forced tool choices and the Responses API.

One server for the file: the tiny random model with `--enable-auto-tool-choice` (the parser defaults to
hermes) and no auth, as `make serve` runs locally. Forced choices (`required`, a named function) go through
structured outputs, so even random weights produce valid calls; the tools' arguments are enums, so a call is
short and its validity is checked against the tool's JSON schema, not just parsed.

The official `openai` client runs here, in .venv-serve. LangChain, instructor and the OpenAI Agents SDK cannot
be installed next to vLLM (requirements/clients.txt says why), so they run in .venv-clients: each test runs one
scenario of `client_scenarios.py` there as a subprocess and checks what it observed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.service.client_scenarios import Forecast, weather_report
from tsumugi.launcher import REPO, ServerProcess, service_process

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

MODEL = "tiny"
CLIENTS_PYTHON = REPO / ".venv-clients" / "bin" / "python"
QUESTION = [{"role": "user", "content": "What is the weather in Tokyo?"}]
MAX_TOKENS = 128  # one call with these arguments takes 25-70 tokens on the tiny model

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Tokyo", "Osaka", "Kyoto"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather in a city.", "parameters": WEATHER_PARAMETERS},
}
ALARM_PARAMETERS = {
    "type": "object",
    "properties": {"hour": {"type": "integer", "enum": [6, 7, 8]}, "loud": {"type": "boolean"}},
    "required": ["hour", "loud"],
    "additionalProperties": False,
}
ALARM_TOOL = {
    "type": "function",
    "function": {"name": "set_alarm", "description": "Set an alarm clock.", "parameters": ALARM_PARAMETERS},
}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time", "description": "The current time."}}  # no params
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "set_alarm": ALARM_PARAMETERS, "get_time": {"type": "object"}}


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


@pytest.fixture(scope="module")  # only this file uses it: its engine's memory is freed once the file is done
def clients_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = [
        "--model", str(tiny_model),
        "--served-model-name", MODEL,
        "--max-model-len", "1024",
        "--enforce-eager",
        "--no-auth",
        "--enable-auto-tool-choice",
    ]  # fmt: skip
    proc = service_process(args, tmp_path_factory.mktemp("logs") / "clients-server.log").start()
    yield proc
    proc.stop_in_background()


@pytest.fixture(scope="module")
def oai(clients_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{clients_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def assert_valid_call(name: str, arguments: str | dict[str, Any]) -> dict[str, Any]:
    """The call names a known tool and its arguments are a JSON object that the tool's schema accepts."""
    decoded = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert isinstance(decoded, dict), arguments
    jsonschema.validate(decoded, SCHEMAS[name])
    return decoded


def accumulate_stream(chunks: Iterator[Any]) -> tuple[dict[int, dict[str, Any]], list[str | None], str]:
    """Calls rebuilt from streamed chat chunks as a client must (by index), finish reasons seen, content."""
    calls: dict[int, dict[str, Any]] = {}
    finish_reasons: list[str | None] = []
    content = ""
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or ():
                if delta.index not in calls:
                    # The first delta of a call opens it: id, type and name, before any argument fragment.
                    assert delta.id and delta.type == "function" and delta.function.name, delta
                    calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
                else:
                    assert delta.id is None or delta.id == calls[delta.index]["id"], delta
                calls[delta.index]["arguments"] += delta.function.arguments or ""
            if choice.finish_reason is not None:
                finish_reasons.append(choice.finish_reason)
    return calls, finish_reasons, content


# ---- the official openai client ------------------------------------------------------------------------------
def test_named_tool_choice_is_exactly_that_call(oai: openai.OpenAI):
    completion = oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER_TOOL, ALARM_TOOL],
        tool_choice=named("get_weather"),
        max_tokens=MAX_TOKENS,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"  # OpenAI's for a named choice
    assert choice.message.role == "assistant" and not choice.message.content
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    assert_valid_call("get_weather", call.function.arguments)


def test_required_tool_choice_calls_tools(oai: openai.OpenAI):
    completion = oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER_TOOL, ALARM_TOOL],
        tool_choice="required",
        # The random model makes 1-7 calls of ~55 tokens (about 60% of the time one more): 400 tokens (the prompt
        # takes ~560 of 1024) cut about one answer in 50, so the sampling is seeded to keep the test deterministic.
        max_tokens=400,
        seed=1,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and len({call.id for call in calls}) == len(calls)
    for call in calls:
        assert call.type == "function"
        assert_valid_call(call.function.name, call.function.arguments)


def test_stream_helper_accumulates_a_required_call(oai: openai.OpenAI):
    tool = openai.pydantic_function_tool(Forecast, name="get_forecast")  # strict: the helper parses the arguments
    with oai.chat.completions.stream(
        model=MODEL,
        messages=QUESTION,
        tools=[tool],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=MAX_TOKENS,
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls  # parallel_tool_calls=False: one call
    assert call.function.name == "get_forecast" and call.id
    assert isinstance(call.function.parsed_arguments, Forecast)
    assert call.function.parsed_arguments == Forecast.model_validate_json(call.function.arguments)
    done = [event for event in events if event.type == "tool_calls.function.arguments.done"]
    assert [(e.name, e.index, e.arguments) for e in done] == [("get_forecast", 0, call.function.arguments)]
    calls, finish_reasons, _ = accumulate_stream(event.chunk for event in events if event.type == "chunk")
    assert finish_reasons == ["tool_calls"]
    assert calls == {0: {"id": call.id, "name": "get_forecast", "arguments": call.function.arguments}}


def test_stream_helper_with_a_named_choice(oai: openai.OpenAI):
    with oai.chat.completions.stream(
        model=MODEL,
        messages=QUESTION,
        tools=[openai.pydantic_function_tool(Forecast, name="get_forecast")],
        tool_choice=named("get_forecast"),
        max_tokens=MAX_TOKENS,
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "stop"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_forecast"
    assert isinstance(call.function.parsed_arguments, Forecast)


@pytest.mark.parametrize("choice", ["named", "required"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_tool_without_parameters_gets_empty_arguments(oai: openai.OpenAI, choice: str, stream: bool):
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What time is it?"}],
        "tools": [CLOCK_TOOL],
        "tool_choice": named("get_time") if choice == "named" else "required",
        "parallel_tool_calls": False,
        "max_tokens": MAX_TOKENS,
    }
    expected_finish = "stop" if choice == "named" else "tool_calls"
    if stream:
        calls, finish_reasons, _ = accumulate_stream(oai.chat.completions.create(**request, stream=True))
        assert finish_reasons == [expected_finish]
        [call] = calls.values()
        name, arguments = call["name"], call["arguments"]
        assert json.loads(arguments) == {}, arguments  # never "" (clients json.loads it)
    else:
        completion = oai.chat.completions.create(**request)
        assert completion.choices[0].finish_reason == expected_finish
        [call] = completion.choices[0].message.tool_calls
        name, arguments = call.function.name, call.function.arguments
        assert arguments == "{}"
    assert name == "get_time"


RESPONSES_WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": WEATHER_PARAMETERS, "strict": True}


def assert_function_call_item(item: Any) -> dict[str, Any]:
    assert item.type == "function_call" and item.name == "get_weather", item
    assert item.call_id and item.id, item
    return assert_valid_call("get_weather", item.arguments)


def test_responses_function_call(oai: openai.OpenAI):
    response = oai.responses.create(
        model=MODEL,
        input="What is the weather in Tokyo?",
        tools=[RESPONSES_WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=MAX_TOKENS,
    )
    assert response.object == "response" and response.status == "completed" and response.model == MODEL
    [item] = response.output
    assert_function_call_item(item)
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


@pytest.mark.parametrize("how", ["create", "stream_helper"])
def test_responses_function_call_streamed(oai: openai.OpenAI, how: str):
    request = {
        "model": MODEL,
        "input": [{"role": "user", "content": "What is the weather in Tokyo?"}],
        "tools": [RESPONSES_WEATHER_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": MAX_TOKENS,
    }
    if how == "create":
        events = list(oai.responses.create(**request, stream=True))
        final = events[-1].response
    else:  # the helper accumulates the response from the events; it needs response.completed
        with oai.responses.stream(**request) as stream:
            events = list(stream)
            final = stream.get_final_response()
    types = [event.type for event in events]
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(set(numbers)), numbers
    deltas = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    core = [t for t in types if t not in ("response.in_progress", "response.function_call_arguments.delta")]
    assert core == [
        "response.created",
        "response.output_item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ], types
    assert deltas and types.index("response.output_item.added") < types.index("response.function_call_arguments.delta")
    added, arguments_done, item_done = (
        next(e for e in events if e.type == t)
        for t in ("response.output_item.added", "response.function_call_arguments.done", "response.output_item.done")
    )
    assert added.item.type == "function_call" and added.item.name == "get_weather" and added.item.call_id
    assert arguments_done.arguments == "".join(deltas) == item_done.item.arguments
    assert_function_call_item(item_done.item)
    assert item_done.item.call_id == added.item.call_id
    assert final.status == "completed"
    [item] = final.output
    assert item.call_id == added.item.call_id and item.arguments == arguments_done.arguments


def assert_text_response(response: Any, max_output_tokens: int) -> str:
    """A text answer: one assistant message of one output_text part; `incomplete` exactly when cut short."""
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    [part] = message.content
    assert part.type == "output_text" and part.text and response.output_text == part.text
    if response.status == "incomplete":  # what the random model nearly always does within a few tokens
        assert response.incomplete_details.reason == "max_output_tokens"
        assert response.usage.output_tokens == max_output_tokens
    else:
        assert response.status == "completed" and response.incomplete_details is None
    return part.text


def test_responses_text(oai: openai.OpenAI):
    response = oai.responses.create(model=MODEL, input="Say hello.", instructions="Be brief.", max_output_tokens=8)
    assert response.object == "response" and response.instructions == "Be brief."
    assert_text_response(response, 8)


def test_responses_text_streamed(oai: openai.OpenAI):
    events = list(oai.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8, stream=True))
    types = [event.type for event in events]
    final = events[-1].response
    core = [t for t in types if t not in ("response.in_progress", "response.output_text.delta")]
    assert core == [
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{final.status}",  # response.completed, or response.incomplete when cut short
    ], types
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert assert_text_response(final, 8) == text
    assert next(e for e in events if e.type == "response.output_text.done").text == text


# ---- LangChain, instructor, the OpenAI Agents SDK (in .venv-clients) -------------------------------------------
def scenario(server: ServerProcess, name: str, *args: str) -> dict[str, Any]:
    """Run one scenario of client_scenarios.py in .venv-clients against `server`; what it observed."""
    if not CLIENTS_PYTHON.exists():
        pytest.fail(f"{CLIENTS_PYTHON} is missing; run `make .venv-clients/.installed`")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LANGCHAIN_", "LANGSMITH_"))}
    env["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
    argv = [str(CLIENTS_PYTHON), "-m", "tests.service.client_scenarios", name, f"{server.url}/v1", MODEL, *args]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{name} {args} failed:\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_plain_answer(message: dict[str, Any], api: str) -> None:
    assert message["tool_calls"] == [] and message["invalid_tool_calls"] == [], message
    assert message["content"], message  # text (a string, or Responses' list of text blocks)
    assert message["finish"] in (("stop", "length") if api == "chat" else ("completed", "incomplete")), message


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_langchain_bind_tools_two_turn_loop(clients_server: ServerProcess, api: str):
    seen = scenario(clients_server, "langchain_tool_loop", api)
    first = seen["first"]
    assert first["finish"] == ("stop" if api == "chat" else "completed"), first
    assert first["invalid_tool_calls"] == [], first
    [call] = first["tool_calls"]
    assert call["name"] == "get_weather" and call["id"], call
    args = assert_valid_call("get_weather", call["args"])
    assert seen["tool_message"] == {"content": weather_report(**args), "tool_call_id": call["id"]}
    assert_plain_answer(seen["after_none"], api)
    assert_plain_answer(seen["after_auto"], api)


@pytest.mark.parametrize("method", ["function_calling", "default"])
def test_langchain_with_structured_output(clients_server: ServerProcess, method: str):
    seen = scenario(clients_server, "langchain_structured", method)
    assert seen["parsing_error"] is None and seen["parsed_type"] == "Forecast", seen
    Forecast.model_validate(seen["parsed"])
    raw = seen["raw"]
    assert raw["finish"] == "stop", raw
    if method == "function_calling":  # a call named after the model, forced
        [call] = raw["tool_calls"]
        assert call["name"] == "Forecast" and call["args"] == seen["parsed"], raw
    else:  # json_schema response_format: the answer is the content
        assert raw["tool_calls"] == [] and Forecast.model_validate_json(raw["content"]).model_dump() == seen["parsed"]


def test_instructor_tools_mode(clients_server: ServerProcess):
    seen = scenario(clients_server, "instructor_tools")
    assert seen["parsed_type"] == "Forecast", seen
    Forecast.model_validate(seen["parsed"])
    [call] = seen["tool_calls"]
    assert call["function"]["name"] == "Forecast"
    assert json.loads(call["function"]["arguments"]) == seen["parsed"]
    assert seen["finish_reason"] == "stop"  # instructor forces the call by name


@pytest.mark.parametrize(("api", "output"), [("chat", "text"), ("chat", "structured"), ("responses", "structured")])
def test_agents_sdk_runs_a_function_tool(clients_server: ServerProcess, api: str, output: str):
    seen = scenario(clients_server, "agents_run", api, output)
    [invocation] = seen["invocations"]  # the tool really ran, once, with arguments its schema accepts
    assert_valid_call("get_weather", invocation)
    assert seen["items"][:2] == ["tool_call_item", "tool_call_output_item"], seen
    assert len(seen["model_responses"]) == 2, seen  # the forced call, then the answer (tool_choice reset)
    if output == "structured":
        assert seen["final_output_type"] == "Forecast", seen
        Forecast.model_validate(seen["final_output"])
        assert seen["items"][2:] == ["message_output_item"], seen
    else:
        assert seen["final_output_type"] == "str", seen
        assert seen["items"][2:] in ([], ["message_output_item"]), seen
