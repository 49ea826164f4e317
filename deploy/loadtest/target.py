"""The plan checked against the target: does it answer /v1/models, which models does it serve, which tokenizer.

Done once before any dataset is written, so an unreachable target or a refused key is a one-line UsageError
rather than a GuideLLM run full of failed requests.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from deploy.loadtest.plan import REPO, SPLITTABLE, LoadPlan, ModelShare, UsageError, note


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The bearer header for /v1/models and /metrics (GuideLLM gets the key in its scenario instead)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def probe_target(target: str, api_key: str | None) -> list[dict[str, Any]]:
    """The target's /v1/models entries; UsageError when it cannot be reached or refuses the key."""
    request = urllib.request.Request(f"{target}/v1/models", headers=auth_headers(api_key))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return list(json.loads(response.read()).get("data") or [])
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise UsageError(f"{target} refused the API key ({error.code}); pass --api-key") from None
        raise UsageError(f"{target}/v1/models answered {error.code}; is this an OpenAI-compatible server?") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UsageError(f"cannot reach {target}: {reason}") from None
    except ValueError:
        raise UsageError(f"{target}/v1/models did not answer JSON; is this an OpenAI-compatible server?") from None


def resolve_models(plan: LoadPlan, listed: list[dict[str, Any]]) -> LoadPlan:
    """The plan with its models filled in (default: the first listed) and a note for unlisted names."""
    listed_ids = [entry.get("id") for entry in listed]
    models = plan.models
    if not models:
        if not listed_ids:
            raise UsageError(f"{plan.target} lists no models; pass --model")
        models = (ModelShare(str(listed_ids[0]), 1.0),)
    for model in models:
        if model.name not in listed_ids:
            note(f"{model.name} is not in {plan.target}/v1/models; its requests will probably fail")
    if len(models) > 1 and not plan.simultaneous and len({model.weight for model in models}) > 1:
        note(f"--profile {plan.profile} runs each model in turn; weights apply only to {', '.join(SPLITTABLE)}")
    return replace(plan, models=models)


def choose_tokenizer(plan: LoadPlan) -> str:
    """--tokenizer, else the first model when it names a local directory (as `make serve`'s default does).

    A local directory is returned absolute, since GuideLLM runs from the repository root.
    """
    name = plan.tokenizer or plan.models[0].name
    for candidate in (Path(name), REPO / name):
        if candidate.is_dir():
            return str(candidate.resolve())
    if plan.tokenizer is None:
        raise UsageError(
            "prompt lengths are counted in tokens: pass --tokenizer (the served model's tokenizer, a local "
            "directory or a hub id)"
        )
    return name
