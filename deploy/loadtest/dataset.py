"""GuideLLM's dataset for a run: Japanese and English prompts built to sampled token lengths.

GuideLLM's own synthetic data is English-like filler text; our users send Japanese and English, whose token
counts per character differ by several times, so prompts are built from the sentence pools in
`prompt_pools/`: an instruction (with a ticket number, so no two prompts share a cached prefix), then pool
sentences in a shuffled order until the sampled length is reached, the last one cut to fit. Lengths are in
tokens of the model's own tokenizer. Each row also carries the sampled output length, which GuideLLM sends
as `max_completion_tokens` with `ignore_eos` (a vLLM extension), so every request generates exactly that many.
The file has one JSON object per line with `prompt` and `output_tokens_count` (GuideLLM's column names),
read one block per step by step_blocks.py.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

POOLS = Path(__file__).with_name("prompt_pools")
LANGUAGES = ("en", "ja")
DISTRIBUTION_KINDS = ("fixed", "uniform", "normal", "lognormal")
LENGTH_SYNTAX = (
    "N | uniform:LOW:HIGH | normal:MEAN:STDEV[:MIN:MAX] | lognormal:MEDIAN:SIGMA[:MIN:MAX] (tokens, integers >= 1)"
)

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class LengthDistribution:
    """A distribution of token counts, from a command-line spec such as `normal:256:64:32:512`.

    `normal` and `lognormal` are clipped to [MIN, MAX] (default [1, unbounded]); `lognormal` takes the
    median and the sigma of the underlying normal, the long-tailed shape real chat lengths have.
    """

    spec: str
    kind: str
    first: float  # N, LOW, MEAN or MEDIAN
    second: float = 0.0  # HIGH, STDEV or SIGMA
    low: int = 1
    high: int | None = None

    @classmethod
    def parse(cls, spec: str) -> LengthDistribution:
        """The distribution `spec` names; ValueError with the accepted syntax when it names none."""
        parts = spec.strip().split(":")
        try:
            if len(parts) == 1:
                return cls._checked(cls(spec, "fixed", _positive_int(parts[0]), low=_positive_int(parts[0])))
            kind, values = parts[0], parts[1:]
            if kind == "uniform" and len(values) == 2:
                low, high = _positive_int(values[0]), _positive_int(values[1])
                return cls._checked(cls(spec, kind, low, high, low=low, high=high))
            if kind in ("normal", "lognormal") and len(values) in (2, 4):
                centre, spread = _number(values[0]), _number(values[1])
                low, high = (_positive_int(values[2]), _positive_int(values[3])) if len(values) == 4 else (1, None)
                return cls._checked(cls(spec, kind, centre, spread, low=low, high=high))
        except ValueError as error:
            raise ValueError(f"bad length distribution {spec!r}: {error}; use {LENGTH_SYNTAX}") from None
        raise ValueError(f"bad length distribution {spec!r}; use {LENGTH_SYNTAX}")

    @staticmethod
    def _checked(distribution: LengthDistribution) -> LengthDistribution:
        if distribution.high is not None and distribution.high < distribution.low:
            raise ValueError(f"maximum {distribution.high} is below minimum {distribution.low}")
        if distribution.kind in ("normal", "lognormal") and (distribution.first <= 0 or distribution.second < 0):
            raise ValueError("the centre must be > 0 and the spread >= 0")
        return distribution

    def sample(self, rng: random.Random) -> int:
        """One token count, drawn with `rng` (seeded by the caller, so a dataset is reproducible)."""
        if self.kind == "fixed":
            return int(self.first)
        if self.kind == "uniform":
            return rng.randint(int(self.first), int(self.second))
        if self.kind == "normal":
            value = rng.gauss(self.first, self.second)
        else:
            value = math.exp(rng.gauss(math.log(self.first), self.second))
        value = max(self.low, round(value))
        return min(value, self.high) if self.high is not None else value

    def largest(self) -> int | None:
        """The largest value it can give, or None when unbounded."""
        if self.kind == "fixed":
            return int(self.first)
        return self.high


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"{value} is not >= 1")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


@dataclass(frozen=True)
class LanguagePool:
    """One language's instructions (one per prompt) and body sentences, read from prompt_pools/."""

    language: str
    instructions: list[str]
    sentences: list[str]
    ticket_label: str

    @classmethod
    def load(cls, language: str, directory: Path = POOLS) -> LanguagePool:
        def lines(name: str) -> list[str]:
            text = (directory / f"{language}_{name}.txt").read_text(encoding="utf-8")
            return [line.strip() for line in text.splitlines() if line.strip()]

        return cls(language, lines("instructions"), lines("sentences"), "チケット" if language == "ja" else "Ticket ")


def build_prompt(pool: LanguagePool, target_tokens: int, ticket: int, count: TokenCounter, rng: random.Random) -> str:
    """A prompt of at most `target_tokens` tokens (as close as whole characters allow), in `pool`'s language.

    Sentences are added whole while they fit and the pool is reshuffled when used up; the sentence that
    would overflow is cut by characters (binary search on the count), so lengths follow the distribution
    rather than sentence boundaries. Japanese sentences join without spaces, English ones with a space.
    """
    separator = "" if pool.language == "ja" else " "
    text = f"{pool.ticket_label}{ticket}: {rng.choice(pool.instructions)}\n"
    if count(text) >= target_tokens:
        return _cut_to_fit(text, target_tokens, count)
    order: list[str] = []
    first = True
    while True:
        if not order:
            order = rng.sample(pool.sentences, len(pool.sentences))
        sentence = order.pop()
        candidate = text + ("" if first else separator) + sentence
        if count(candidate) > target_tokens:
            return _cut_to_fit(candidate, target_tokens, count, keep=len(text))
        text, first = candidate, False


def _cut_to_fit(text: str, target_tokens: int, count: TokenCounter, keep: int = 0) -> str:
    """The longest prefix of `text` (at least `keep` characters) with at most `target_tokens` tokens."""
    low, high = keep, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count(text[:middle]) <= target_tokens:
            low = middle
        else:
            high = middle - 1
    return text[:low] if low > 0 else text[:1]


@dataclass(frozen=True)
class DatasetSummary:
    """What was written, for the report: the requested shape and the achieved one."""

    path: Path
    rows: int
    japanese_rows: int
    prompt_tokens_mean: float
    prompt_tokens_max: int
    output_tokens_mean: float
    output_tokens_max: int

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "rows": self.rows,
            "japanese_rows": self.japanese_rows,
            "english_rows": self.rows - self.japanese_rows,
            "prompt_tokens_mean": round(self.prompt_tokens_mean, 1),
            "prompt_tokens_max": self.prompt_tokens_max,
            "output_tokens_mean": round(self.output_tokens_mean, 1),
            "output_tokens_max": self.output_tokens_max,
        }


def write_dataset(
    path: Path,
    rows: int,
    prompt_lengths: LengthDistribution,
    output_lengths: LengthDistribution,
    japanese_share: float,
    count: TokenCounter,
    seed: int,
    ticket_start: int = 1000,
) -> DatasetSummary:
    """Write `rows` prompts to `path` in GuideLLM's json_file format; same arguments, same file."""
    rng = random.Random(seed)
    pools = {language: LanguagePool.load(language) for language in LANGUAGES}
    prompt_counts: list[int] = []
    output_counts: list[int] = []
    japanese_rows = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for index in range(rows):
            language = "ja" if rng.random() < japanese_share else "en"
            japanese_rows += language == "ja"
            prompt = build_prompt(pools[language], prompt_lengths.sample(rng), ticket_start + index, count, rng)
            output_tokens = output_lengths.sample(rng)
            prompt_counts.append(count(prompt))
            output_counts.append(output_tokens)
            row = {"prompt": prompt, "output_tokens_count": output_tokens}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return DatasetSummary(
        path, rows, japanese_rows, mean(prompt_counts), max(prompt_counts), mean(output_counts), max(output_counts)
    )


def tokenizer_counter(name_or_path: str) -> TokenCounter:
    """Token counts of the model's own tokenizer (a local directory or a hub id), without special tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
