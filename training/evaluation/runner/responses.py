"""What a server's reply means: an OpenAI answer (anything else in a 200 is an error, never an answer), a
refusal described in one line with the server's own words, or a `Retry-After` to wait for."""

from __future__ import annotations

import json
import math
from datetime import UTC
from email.utils import parsedate_to_datetime

import httpx

from training.evaluation.runner.endpoint import API_KEY_ENV, Answer, Endpoint, EndpointError


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from `now`: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def parse_answer(response: httpx.Response, url: str, endpoint: Endpoint, chat: bool) -> Answer:
    """choices[0] of an OpenAI completion or chat completion; anything else is an error, never an answer."""
    where = f"{url} (model '{endpoint.model}'): HTTP 200 but"
    try:
        body = response.json()
    except ValueError:
        raise EndpointError(f"{where} the body is not JSON: {_one_line(response.text)!r}") from None
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise EndpointError(f"{where} the body has no choices: {_one_line(response.text)!r}")
    choice = choices[0]
    if chat:
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else 0  # 0: not a string, reported below
        text = "" if content is None else content  # null content is valid (e.g. only tool calls)
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        field_name = "choices[0].message.content" if chat else "choices[0].text"
        raise EndpointError(f"{where} {field_name} is not a string: {_one_line(response.text)!r}")
    finish_reason = choice.get("finish_reason")
    usage = body.get("usage")
    return Answer(
        text=text,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        cached=False,
        usage=usage if isinstance(usage, dict) else None,
    )


def refusal_message(response: httpx.Response, url: str, endpoint: Endpoint) -> str:
    message = f"{url} refused model '{endpoint.model}': HTTP {response.status_code}: {server_message(response)}"
    if response.status_code in (401, 403):
        message += f" (check --api-key or ${API_KEY_ENV})"
    elif response.status_code == 404 and not endpoint.base_url.endswith("/v1"):
        message += " (does --base-url end with /v1?)"
    return message


def server_message(response: httpx.Response) -> str:
    """The error text of OpenAI's envelope `{"error": {"message"}}`, vLLM's and FastAPI's shapes, or the body."""
    try:
        body = response.json()
    except ValueError:
        return _one_line(response.text) or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _one_line(error["message"])
        for candidate in (error, body.get("message"), body.get("detail")):
            if isinstance(candidate, str):
                return _one_line(candidate)
    return _one_line(json.dumps(body, ensure_ascii=False))


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
