"""The endpoint flags `eval run` and `eval judge` share (--base-url, --api-key, --concurrency, --cache-dir,
--timeout, --max-retries), and the Runner and Endpoint they describe."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from pathlib import Path

from training.evaluation.runner.cache import CACHE_FILE
from training.evaluation.runner.client import Runner
from training.evaluation.runner.endpoint import API_KEY_ENV, DEFAULT_BASE_URL, OPENAI_HOST, Endpoint, api_key_for
from tsumugi.cli_flags import add_flags, command_settings, flags_of, setting


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


@command_settings
class EndpointSettings:
    """Where to ask and how hard: the flags `eval run` and `eval judge` share, and their defaults."""

    base_url: str = setting(
        DEFAULT_BASE_URL, f"OpenAI-compatible API root, up to /v1 (default: {DEFAULT_BASE_URL}, `python -m service`)"
    )
    api_key: str | None = setting(
        None, f"bearer key; default ${API_KEY_ENV}, else $OPENAI_API_KEY but only for https://{OPENAI_HOST}"
    )
    concurrency: int = setting(8, "requests in flight at once (default 8)", type=_positive_int)
    cache_dir: Path | None = setting(
        None, f"keep every answer in DIR/{CACHE_FILE}; a rerun (or a killed run's rerun) sends only what is missing"
    )
    timeout: float = setting(120.0, "seconds per request (default 120)", type=_positive_float)
    max_retries: int = setting(5, "retries after 429/5xx/timeouts (default 5)", type=_non_negative_int)


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say where to ask and how hard: --base-url, --api-key, --concurrency, --cache-dir, ..."""
    add_flags(parser, flags_of(EndpointSettings, group="endpoint"))


def runner_from_args(args: argparse.Namespace, progress: bool = True) -> Runner:
    """The Runner the flags of `add_endpoint_arguments` describe."""
    return Runner(
        cache_dir=args.cache_dir,
        concurrency=args.concurrency,
        max_retries=args.max_retries,
        timeout_s=args.timeout,
        progress=progress,
    )


def endpoint_from_args(args: argparse.Namespace, model: str, environ: Mapping[str, str] | None = None) -> Endpoint:
    """The Endpoint of --base-url, with the key from --api-key or the environment (see `api_key_for`)."""
    environ = os.environ if environ is None else environ
    return Endpoint(base_url=args.base_url, model=model, api_key=api_key_for(args.base_url, args.api_key, environ))
