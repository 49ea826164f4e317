"""Client-library scenarios against a running service, run in .venv-clients by tests/service/test_clients.py.

LangChain, instructor and the OpenAI Agents SDK cannot be installed next to vLLM (see requirements/clients.txt),
so each scenario runs here, in their virtualenv, as `python -m tests.service.client_scenarios NAME BASE_URL
MODEL [ARG...]`, and prints one JSON object of what it observed on its last line of stdout; the test makes the
assertions. A scenario does what an application would: the library's public API, unchanged, pointed at the
service. It fails loudly (non-zero exit, traceback on stderr) if the library raises.

The tools' arguments are enums and booleans: on the random tiny model structured outputs make a forced call
valid, and bounded values keep it short.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel

City = Literal["Tokyo", "Osaka", "Kyoto"]
Unit = Literal["celsius", "fahrenheit"]
MAX_TOKENS = 128  # room for one call with these arguments (25-70 tokens on the tiny model), short free text
QUESTION = "What is the weather in Tokyo?"


class Forecast(BaseModel):
    """A weather forecast for one city."""

    city: City
    sunny: bool
    unit: Unit


def weather_report(city: str, unit: str) -> str:
    return f"It is sunny in {city}, 21 degrees {unit}."


def _ai_message(message: Any) -> dict[str, Any]:
    return {
        "content": message.content,
        "tool_calls": message.tool_calls,
        "invalid_tool_calls": message.invalid_tool_calls,
        # Chat Completions' finish_reason, or the Responses API's status.
        "finish": message.response_metadata.get("finish_reason") or message.response_metadata.get("status"),
    }


def langchain_tool_loop(base_url: str, model: str, api: str) -> dict[str, Any]:
    """`bind_tools` with a named choice, run the tool, send its result back; then answer with `none` and `auto`.

    `api` is `chat` (ChatOpenAI's default here) or `responses` (`use_responses_api=True`).
    """
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: City, unit: Unit) -> str:
        """Current weather in a city."""
        return weather_report(city, unit)

    llm = ChatOpenAI(
        base_url=base_url,
        api_key="x",
        model=model,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=120,
        use_responses_api=api == "responses",
    )
    messages: list[Any] = [HumanMessage(QUESTION)]
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    result = get_weather.invoke(first.tool_calls[0])  # a ToolCall in, a ToolMessage out
    messages += [first, result]
    after_none = llm.bind_tools([get_weather], tool_choice="none").invoke(messages)
    after_auto = llm.bind_tools([get_weather], tool_choice="auto").invoke(messages)
    return {
        "first": _ai_message(first),
        "tool_message": {"content": result.content, "tool_call_id": result.tool_call_id},
        "after_none": _ai_message(after_none),
        "after_auto": _ai_message(after_auto),
    }


def langchain_structured(base_url: str, model: str, method: str) -> dict[str, Any]:
    """`with_structured_output(Forecast, method=...)`; `default` leaves the method to LangChain (json_schema)."""
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key="x", model=model, max_tokens=MAX_TOKENS, max_retries=0, timeout=120)
    kwargs = {} if method == "default" else {"method": method}
    out = llm.with_structured_output(Forecast, include_raw=True, **kwargs).invoke(QUESTION)
    parsed = out["parsed"]
    return {
        "parsed_type": type(parsed).__name__,
        "parsed": parsed.model_dump() if isinstance(parsed, BaseModel) else parsed,
        "parsing_error": repr(out["parsing_error"]) if out["parsing_error"] else None,
        "raw": _ai_message(out["raw"]),
    }


def instructor_tools(base_url: str, model: str) -> dict[str, Any]:
    """instructor in TOOLS mode: the response model is sent as a forced tool and the call parsed into it."""
    import instructor
    from openai import OpenAI

    client = instructor.from_openai(
        OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=120), mode=instructor.Mode.TOOLS
    )
    forecast, completion = client.chat.completions.create_with_completion(
        model=model,
        response_model=Forecast,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=MAX_TOKENS,
        max_retries=0,
    )
    choice = completion.choices[0]
    return {
        "parsed_type": type(forecast).__name__,
        "parsed": forecast.model_dump(),
        "finish_reason": choice.finish_reason,
        "tool_calls": [call.model_dump() for call in choice.message.tool_calls or ()],
    }


def agents_run(base_url: str, model: str, api: str, output: str) -> dict[str, Any]:
    """`Runner.run` with a function tool and `tool_choice="required"` on the Responses or Chat Completions API.

    The SDK resets `tool_choice` after a tool ran, so the second turn is `auto` and ends the run: with text
    (`output="text"`), or with a `Forecast` (`output="structured"`: the SDK's own forcing_tool_use example,
    which sends the forced choice and the output's JSON schema together). On the Responses API an answer cut
    by `max_output_tokens` is `incomplete`, which the SDK raises on; the random model's free text never ends,
    so there only the structured answer (its grammar closes) can finish.
    """
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    invocations: list[dict[str, Any]] = []

    @function_tool
    def get_weather(city: City, unit: Unit) -> str:
        """Current weather in a city."""
        invocations.append({"city": city, "unit": unit})
        return weather_report(city, unit)

    client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=120)
    model_class = {"responses": OpenAIResponsesModel, "chat": OpenAIChatCompletionsModel}[api]
    structured = output == "structured"
    agent = Agent(
        name="forecaster",
        instructions="Answer questions about the weather with the get_weather tool.",
        tools=[get_weather],
        model=model_class(model=model, openai_client=client),
        output_type=Forecast if structured else None,
        # The structured answer is left the whole context (whitespace-padded JSON on random weights).
        model_settings=ModelSettings(
            tool_choice="required", parallel_tool_calls=False, max_tokens=None if structured else MAX_TOKENS
        ),
    )
    result = asyncio.run(Runner.run(agent, QUESTION, max_turns=4))
    final = result.final_output
    return {
        "invocations": invocations,
        "final_output": final.model_dump() if isinstance(final, BaseModel) else final,
        "final_output_type": type(final).__name__,
        "items": [item.type for item in result.new_items],
        "model_responses": [[item.model_dump() for item in response.output] for response in result.raw_responses],
    }


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "langchain_tool_loop": langchain_tool_loop,
    "langchain_structured": langchain_structured,
    "instructor_tools": instructor_tools,
    "agents_run": agents_run,
}

if __name__ == "__main__":
    name, *args = sys.argv[1:]
    print(json.dumps(SCENARIOS[name](*args), default=repr))
