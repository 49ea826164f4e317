"""Where answers come from: an OpenAI-compatible API root, a model on it and its key. OPENAI_API_KEY is sent
only to OpenAI's own host, so an evaluation against another server never hands it over."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from training.errors import ConfigError, TrainingError

API_KEY_ENV = "TSUMUGI_EVAL_API_KEY"
OPENAI_HOST = "api.openai.com"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


class EndpointError(TrainingError):
    """The endpoint refused a request, or kept failing: the message names the URL, the model and the reason."""


@dataclass(frozen=True)
class Endpoint:
    """Where to ask and which model: `base_url` up to and including `/v1`. The key is kept out of repr."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if urlsplit(self.base_url).scheme not in ("http", "https") or not urlsplit(self.base_url).netloc:
            raise ConfigError(f"--base-url must be an http(s) URL such as {DEFAULT_BASE_URL}, got {self.base_url!r}")
        if not self.model.strip():
            raise ConfigError("the model name is empty")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))  # `.../v1/` and `.../v1` are one endpoint


@dataclass(frozen=True)
class Answer:
    """A model's answer to one payload; `cached` says it came from the cache rather than the endpoint."""

    text: str
    finish_reason: str | None
    cached: bool
    usage: dict | None


def api_key_for(base_url: str, given: str | None, environ: Mapping[str, str]) -> str | None:
    """--api-key, else $TSUMUGI_EVAL_API_KEY, else $OPENAI_API_KEY when the endpoint is OpenAI's own.

    OPENAI_API_KEY is not sent anywhere else: it is often set in a shell for other reasons, and an
    evaluation against some other host must not hand it over."""
    if given:
        return given
    if environ.get(API_KEY_ENV):
        return environ[API_KEY_ENV]
    if urlsplit(base_url).hostname == OPENAI_HOST and environ.get("OPENAI_API_KEY"):
        return environ["OPENAI_API_KEY"]
    return None
