"""The licence guard: what terms the base model and each data file come with, whether they allow the intended use,
and the obligations every artifact derived from them carries.

Terms are declared in a small vocabulary (`Terms`): a licence name (an SPDX id such as `Apache-2.0`,
`CC-BY-NC-SA-4.0`, or a named licence such as `Llama-3-Community`) plus the flags that decide what a team may do
with a fine-tune: commercial use, share-alike, attribution text, a required name prefix, a monthly-user
threshold, and "these are outputs of provider X, whose terms restrict training competing models on them".

Where terms come from, first match wins:
1. a sidecar next to the input: `<data file>.licence.yaml` for a data file, `licence.yaml` inside a model
   directory; it holds either the terms themselves or `known: <name>` naming an entry of the table below;
2. the built-in table `KNOWN_TERMS`, by the base model's name (a hub name such as
   `meta-llama/Meta-Llama-3-8B-Instruct`), each entry citing where its terms are stated.

The policy (`assess`), for `--intended-use research|internal|commercial`:

| declared terms                     | research | internal | commercial |
|------------------------------------|----------|----------|------------|
| no terms found                     | conflict | conflict | conflict   |
| no commercial use (CC BY-NC, ...)  | allowed  | conflict | conflict   |
| outputs of a restricting provider  | allowed  | conflict | conflict   |
| share-alike, attribution, prefix,  | obligations, recorded for every use        |
| user threshold                     |                                             |

"internal" is use inside the organisation: still commercial use in the sense of CC's NC clause ("primarily
intended for or directed towards commercial advantage"), and still "developing" a model under a provider's
output terms. A conflict stops training unless `--accept-licence-risk "REASON"` is given; the reason and the
conflicts it accepted are recorded in the manifest. This is a guard against mistakes, not legal advice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training.errors import TrainingError

IntendedUse = Literal["research", "internal", "commercial"]
MODEL_SIDECAR = "licence.yaml"
DATA_SIDECAR_SUFFIX = ".licence.yaml"


class LicenceError(TrainingError):
    """Declared terms that conflict with the intended use, or a sidecar that cannot be read."""


class Terms(BaseModel):
    """The terms an input comes with, in the vocabulary the guard reasons with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    licence: str = Field(min_length=1, description="SPDX id or named licence, e.g. Apache-2.0, Llama-3-Community")
    commercial_use: bool = Field(True, description="false: no commercial use (CC BY-NC-*, research-only terms)")
    share_alike: bool = Field(False, description="derivatives must be released under the same licence")
    attribution: str | None = Field(None, description="text a derived model or product must display")
    name_prefix: str | None = Field(None, description="a derived model's name must begin with this")
    user_threshold: int | None = Field(None, gt=0, description="monthly active users above which a licence is needed")
    restricted_outputs: tuple[str, ...] = Field(
        (), description="providers whose outputs these are, when their terms restrict training competing models"
    )
    source: str | None = Field(None, description="where the terms are stated")


LLAMA_3 = Terms(
    licence="Llama-3-Community",
    attribution="Built with Meta Llama 3",
    name_prefix="Llama 3",
    user_threshold=700_000_000,
    source="https://llama.meta.com/llama3/license/ (1.b.i: attribution and name prefix; 2: monthly active users)",
)
LLAMA_3_1 = Terms(
    licence="Llama-3.1-Community",
    attribution="Built with Llama",
    name_prefix="Llama",
    user_threshold=700_000_000,
    source="https://github.com/meta-llama/llama-models/blob/main/models/llama3_1/LICENSE (1.b.i and 2)",
)
SMOLLM2 = Terms(licence="Apache-2.0", source="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct")

KNOWN_TERMS: dict[str, Terms] = {
    **{f"meta-llama/Meta-Llama-3-{size}": LLAMA_3 for size in ("8B", "8B-Instruct", "70B", "70B-Instruct")},
    **{f"meta-llama/Llama-3.1-{size}": LLAMA_3_1 for size in ("8B", "8B-Instruct", "70B", "70B-Instruct")},
    **{
        f"HuggingFaceTB/SmolLM2-{size}": SMOLLM2 for size in ("135M", "135M-Instruct", "360M-Instruct", "1.7B-Instruct")
    },
    "llm-jp/databricks-dolly-15k-ja": Terms(
        licence="CC-BY-SA-3.0",
        share_alike=True,
        attribution="databricks-dolly-15k-ja by LLM-jp, from databricks-dolly-15k by Databricks (CC BY-SA 3.0)",
        source="https://huggingface.co/datasets/llm-jp/databricks-dolly-15k-ja",
    ),
    "llm-jp/oasst1-21k-ja": Terms(licence="Apache-2.0", source="https://huggingface.co/datasets/llm-jp/oasst1-21k-ja"),
    "llm-jp/oasst2-33k-ja": Terms(licence="Apache-2.0", source="https://huggingface.co/datasets/llm-jp/oasst2-33k-ja"),
    "ichikara-instruction": Terms(
        licence="CC-BY-NC-SA-4.0",
        commercial_use=False,
        share_alike=True,
        attribution="ichikara-instruction: LLMのための日本語インストラクションデータ (CC BY-NC-SA 4.0)",
        source="https://liat-aip.sakura.ne.jp/wp/llmのための日本語インストラクションデータ作成/",
    ),
    "openai-outputs": Terms(
        licence="OpenAI-Terms-of-Use",
        restricted_outputs=("OpenAI",),
        source="https://openai.com/policies/terms-of-use/ (What you cannot do: use Output to develop models that "
        "compete with OpenAI)",
    ),
}


class Sidecar(BaseModel):
    """A sidecar file: the terms, or `known: NAME` for an entry of the built-in table."""

    model_config = ConfigDict(extra="forbid")

    known: str | None = None
    terms: Terms | None = None


def read_sidecar(path: Path) -> Terms:
    """Terms from a sidecar file; every mistake is one line naming the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise LicenceError(f"{path}: not valid YAML: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(raw, dict):
        raise LicenceError(f"{path}: must be a mapping with 'known: NAME' or the terms (licence: ...)")
    sidecar = {"known": raw["known"]} if set(raw) == {"known"} else {"terms": raw}
    try:
        parsed = Sidecar.model_validate(sidecar)
    except ValidationError as error:
        problems = "; ".join(
            f"'{'.'.join(str(part) for part in problem['loc'][1:]) or 'known'}': {problem['msg']}"
            for problem in error.errors()
        )
        raise LicenceError(f"{path}: {problems}") from None
    if parsed.known is not None:
        if parsed.known not in KNOWN_TERMS:
            raise LicenceError(f"{path}: known: {parsed.known!r} is not in the table; known: {sorted(KNOWN_TERMS)}")
        return KNOWN_TERMS[parsed.known]
    return parsed.terms


def model_terms(base: str) -> Terms | None:
    """A base model's terms: its directory's `licence.yaml`, else the table by name."""
    sidecar = Path(base) / MODEL_SIDECAR
    if sidecar.is_file():
        return read_sidecar(sidecar)
    return KNOWN_TERMS.get(base)


def data_terms(path: str) -> Terms | None:
    """A data file's terms: `<file>.licence.yaml` next to it."""
    sidecar = Path(str(path) + DATA_SIDECAR_SUFFIX)
    return read_sidecar(sidecar) if sidecar.is_file() else None


def conflicts(intended_use: IntendedUse, declared: dict[str, Terms | None]) -> list[str]:
    """Why each input may not be used as intended (the table in the module docstring); empty when all may."""
    found = []
    for what, terms in declared.items():
        if terms is None:
            found.append(f"{what}: no licence declared (add a sidecar, see training/README.md)")
            continue
        if intended_use != "research" and not terms.commercial_use:
            found.append(f"{what}: {terms.licence} allows no commercial use, intended use is {intended_use}")
        if intended_use != "research" and terms.restricted_outputs:
            providers = ", ".join(terms.restricted_outputs)
            found.append(f"{what}: outputs of {providers}, whose terms restrict training competing models")
    return found


def obligations(declared: dict[str, Terms | None]) -> dict:
    """What a derived model must do or show, gathered from every input's terms."""
    known = [terms for terms in declared.values() if terms is not None]
    thresholds = [terms.user_threshold for terms in known if terms.user_threshold]
    return {
        "attribution": sorted({terms.attribution for terms in known if terms.attribution}),
        "share_alike": sorted({terms.licence for terms in known if terms.share_alike}),
        "name_prefix": sorted({terms.name_prefix for terms in known if terms.name_prefix}),
        "user_threshold": min(thresholds) if thresholds else None,
        "non_commercial": any(not terms.commercial_use for terms in known),
        "restricted_outputs": sorted({provider for terms in known for provider in terms.restricted_outputs}),
    }


def assess(base: str, data_paths: list[str], intended_use: IntendedUse | None, accept_risk: str | None) -> dict:
    """The manifest's `licence` record for a training run; raises `LicenceError` on a conflict not accepted.

    Without an intended use nothing is checked (the terms found and their obligations are still recorded)."""
    declared = {f"base model {base}": model_terms(base)} | {
        f"data file {path}": data_terms(path) for path in data_paths
    }
    found = conflicts(intended_use, declared) if intended_use else []
    if found and not accept_risk:
        raise LicenceError(
            f"licence conflict for --intended-use {intended_use}: {'; '.join(found)}. "
            'Fix the inputs, or give --accept-licence-risk "REASON" (recorded in the manifest)'
        )
    return {
        "intended_use": intended_use,
        "inputs": [
            {"input": what, **(terms.model_dump(mode="json") if terms else {"licence": None})}
            for what, terms in declared.items()
        ],
        "obligations": obligations(declared),
        "accepted_risk": {"reason": accept_risk, "conflicts": found} if found else None,
    }
