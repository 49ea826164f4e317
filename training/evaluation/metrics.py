"""llm-jp-eval v1.3.0's metrics, reimplemented so that our numbers equal the ones it publishes.

A score is only worth reporting next to llm-jp-eval results if it is computed the same way, down to the
quirks, so this module follows v1.3.0's `get_evaluation_result` (src/llm_jp_eval/utils.py) rather than what
the metric names suggest:

- What is scored. The prediction is `normalize(output.split("\\n\\n")[0])`: the text before the first blank
  line, NFKC-normalised, and *not* stripped (a leading space or newline stays and breaks an exact match; an
  output that starts with a blank line scores as the empty answer). The reference is `normalize(output)`: NFKC
  only. `answer_of` and `reference_of` do exactly this; `score_item` applies them, then the metric.
- exact_match: string equality (sklearn's accuracy over the task).
- char_f1: fuzzywuzzy 0.18's `fuzz.token_sort_ratio(pred, ref) / 100` with python-Levenshtein, which is not a
  character F1 at all: characters U+0080..U+00FF are deleted (`force_ascii`, on by default), every non-word
  character becomes a space, the text is lower-cased, split on whitespace, the words sorted and re-joined, and
  the two strings compared by Indel similarity rounded to a whole percent. See `char_f1`.
- set_f1: lines as a set for the prediction but as a list for the reference (duplicates lower the recall).
- pearson / spearman: scipy over (float(reference), parse_float(prediction)); NaN becomes 0.0.
- bleu_en / bleu_ja: `BLEU(...).corpus_score(pred, [ref])` per item with *strings* where sacrebleu expects
  lists, so sacrebleu scores character i of the prediction against character i of the reference, each pair as
  one "segment"; then the mean over items. See `bleu_en`. Scale 0-100, like llm-jp-eval's.

Every per-item value is a `Metric.item`; the task score is `Metric.aggregate` over the item values (the mean,
or the correlation), so a report can bootstrap a confidence interval by re-aggregating resampled items.
"""

from __future__ import annotations

import math
import re
import statistics
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from rapidfuzz.distance import Indel
from sacrebleu.metrics import BLEU
from scipy.stats import pearsonr, spearmanr

from training.errors import ConfigError

# --- What llm-jp-eval scores -------------------------------------------------------------------------------


def answer_of(generated: str) -> str:
    """The part of a model's raw output that llm-jp-eval v1.3.0 scores: before the first blank line, then NFKC.

    v1.3.0 splits on the exact two characters "\\n\\n" (so "\\r\\n\\r\\n" does not split) and does not strip.
    Idempotent: NFKC never creates "\\n\\n", so applying it twice changes nothing."""
    return unicodedata.normalize("NFKC", generated.split("\n\n")[0])


def reference_of(reference: str) -> str:
    """The reference as llm-jp-eval v1.3.0 compares it: NFKC, nothing else (no split, no strip)."""
    return unicodedata.normalize("NFKC", reference)


# --- Per-item metrics: (answer, reference) -> value, both already through answer_of / reference_of ----------


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the strings are identical, else 0.0; the task score is the mean (llm-jp-eval's accuracy)."""
    return 1.0 if prediction == reference else 0.0


# fuzzywuzzy's `asciidammit` deletes exactly these code points and keeps everything else (Japanese included):
# accented Latin-1 letters vanish ("café" scores like "caf"), while U+0100 and beyond are untouched.
_LATIN1_DELETED = dict.fromkeys(range(128, 256))
# fuzzywuzzy's `full_process` pattern, flags included: each character that is not a Unicode word character
# (letter, digit, underscore, as Python's `re` defines them) becomes a space.
_NON_WORD = re.compile(r"\W", re.UNICODE | re.IGNORECASE)


def _sorted_words(text: str) -> str:
    """fuzzywuzzy's `_process_and_sort` with `force_ascii=True, full_process=True`, in its order.

    The order matters: Latin-1 deletion, then non-word characters to spaces, then `str.lower()` on the whole
    string (context-dependent, e.g. a final Greek sigma, and length-changing: "İ" becomes two characters),
    then whitespace split (Python's notion of whitespace), sort by code point, join with one space."""
    words = _NON_WORD.sub(" ", text.translate(_LATIN1_DELETED)).lower().split()
    return " ".join(sorted(words))


def char_f1(prediction: str, reference: str) -> float:
    """`fuzz.token_sort_ratio(prediction, reference) / 100` of fuzzywuzzy 0.18 with python-Levenshtein.

    Built on rapidfuzz's Indel similarity (what python-Levenshtein's `ratio` is) with fuzzywuzzy's own
    preprocessing, because rapidfuzz's `token_sort_ratio` differs by default (no processor: no lower-casing,
    punctuation kept; unrounded) and its `default_process` differs too (treats "_" as a separator, lower-cases
    character by character, keeps Latin-1 letters). fuzzywuzzy's `ratio` checks equality before emptiness, so
    two strings that both process to nothing ("!!!" and "", or "é" and "") score 1.0, one empty side 0.0.
    The percentage is rounded with Python's `round` (ties to even), as fuzzywuzzy's `intr` does."""
    left, right = _sorted_words(prediction), _sorted_words(reference)
    if left == right:
        return 1.0
    if not left or not right:
        return 0.0
    return round(100 * Indel.normalized_similarity(left, right)) / 100  # int(round(x)) in fuzzywuzzy: the same


def set_f1(prediction: str, reference: str) -> float:
    """F1 of the prediction's lines against the reference's lines, as llm-jp-eval v1.3.0 counts them.

    Lines are split on "\\n" and stripped. The prediction's lines form a set, the reference's stay a list:
    precision = found / distinct predicted lines, recall = found / reference lines *counting duplicates*, where
    found = distinct predicted lines that occur in the reference. Neither side is ever empty ("" is one empty
    line), and an empty line matches an empty line. 0.0 when nothing is found."""
    predicted = {line.strip() for line in prediction.split("\n")}
    expected = [line.strip() for line in reference.split("\n")]
    found = sum(1 for line in predicted if line in expected)
    precision, recall = found / len(predicted), found / len(expected)
    return 2 * precision * recall / (precision + recall) if precision + recall != 0 else 0.0


class UnscorableReference(ValueError):
    """A reference this metric cannot use: a correlation metric's reference that is not a number."""


def parse_float(text: str) -> float:
    """llm-jp-eval's `parse_float`: delete every character but ASCII digits and ".", read the rest as a float.

    So "-3" reads as 3.0, "1e5" as 15.0 and "2,5" as 25.0; anything that leaves no valid number is -2.0."""
    try:
        return float(re.sub(r"[^0-9.]", "", text))
    except ValueError:
        return -2.0


def predicted_number(prediction: str, reference: str) -> float:
    """The per-item value of pearson and spearman: the prediction read by `parse_float`.

    The reference is checked here, one item at a time, because llm-jp-eval reads it with plain `float()` and a
    non-number there is a data error (llm-jp-eval would crash on it), best reported with the item it is in."""
    _reference_number(reference)
    return parse_float(prediction)


def _reference_number(reference: str) -> float:
    try:
        return float(reference_of(reference))
    except ValueError:
        raise UnscorableReference(f"expected a number, got {reference!r}") from None


def bleu_en(prediction: str, reference: str) -> float:
    """llm-jp-eval v1.3.0's per-item English BLEU (0-100): `BLEU(effective_order=True).corpus_score(p, [r])`.

    v1.3.0 passes strings where sacrebleu expects lists of sentences, so sacrebleu iterates characters: the
    item becomes a corpus of one-character segments pairing character i of the prediction with character i of
    the reference, as far as the shorter one goes (the rest of the longer one is ignored, so "abc" against "a"
    is 100). Only unigrams exist; whitespace characters are empty segments. This is what the published bleu_en
    numbers measure, so it is reproduced as is. v1.3.0 crashes (IndexError) when either side is empty; here
    that item scores 0.0, as sacrebleu scores an empty hypothesis."""
    if not prediction or not reference:
        return 0.0
    return _english_bleu().corpus_score(prediction, [reference]).score  # type: ignore[arg-type]  # on purpose


def bleu_ja(prediction: str, reference: str) -> float:
    """llm-jp-eval v1.3.0's per-item Japanese BLEU (0-100): `BLEU(trg_lang="ja", effective_order=True)`, i.e.
    sacrebleu's ja-mecab tokenizer (MeCab with the IPA dictionary, as `sacrebleu[ja]` installs), on the same
    one-character segments as `bleu_en`; an empty side scores 0.0 here, where v1.3.0 crashes."""
    if not prediction or not reference:
        return 0.0
    return _japanese_bleu().corpus_score(prediction, [reference]).score  # type: ignore[arg-type]  # on purpose


@cache
def _english_bleu() -> BLEU:
    return BLEU(effective_order=True)  # default tokenizer 13a, as in llm-jp-eval


@cache
def _japanese_bleu() -> BLEU:
    return BLEU(trg_lang="ja", effective_order=True)  # ja-mecab, as in llm-jp-eval


# --- Task scores: (item values, references) -> value, on any non-empty subset ------------------------------


def mean(values: Sequence[float], references: Sequence[str]) -> float:
    """The mean of the item values, computed as llm-jp-eval does (`statistics.mean`, exact before rounding)."""
    _check_sizes(values, references)
    return float(statistics.mean(values))


def pearson(values: Sequence[float], references: Sequence[str]) -> float:
    """Pearson's r of the references (as numbers) and the predicted numbers; 0.0 where it is undefined.

    llm-jp-eval turns NaN (a constant side) into 0.0; with fewer than two items scipy raises instead, and here
    that is 0.0 too, so a bootstrap resample of one item still aggregates. References go through
    `reference_of` here (idempotent), so raw and normalised references give the same result."""
    return _correlation(pearsonr, values, references)


def spearman(values: Sequence[float], references: Sequence[str]) -> float:
    """Spearman's rho, with `pearson`'s conventions: NaN and fewer than two items give 0.0."""
    return _correlation(spearmanr, values, references)


def _correlation(statistic: Callable, values: Sequence[float], references: Sequence[str]) -> float:
    _check_sizes(values, references)
    if len(values) < 2:
        return 0.0
    expected = [_reference_number(reference) for reference in references]
    with warnings.catch_warnings():  # a constant resample warns on every call; NaN is handled below
        warnings.simplefilter("ignore")
        value = float(statistic(expected, list(values)).statistic)
    return 0.0 if math.isnan(value) else value


def _check_sizes(values: Sequence[float], references: Sequence[str]) -> None:
    if len(values) != len(references):
        raise ValueError(f"{len(values)} item values but {len(references)} references")
    if len(values) == 0:  # len, not truthiness: a bootstrap may pass numpy arrays
        raise ValueError("no items to aggregate")


# --- The registry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One llm-jp-eval metric: `item(answer, reference)` per pair, `aggregate(item values, references)` per task.

    `item` takes the *extracted* answer and the normalised reference (`answer_of`, `reference_of`); use
    `score_item` to go from raw model output. `aggregate` takes the item values of any non-empty subset, in the
    same order as their references (only the correlations read the references)."""

    name: str
    item: Callable[[str, str], float]
    aggregate: Callable[[Sequence[float], Sequence[str]], float]


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in [
        Metric("exact_match", exact_match, mean),
        Metric("char_f1", char_f1, mean),
        Metric("set_f1", set_f1, mean),
        Metric("pearson", predicted_number, pearson),
        Metric("spearman", predicted_number, spearman),
        Metric("bleu_en", bleu_en, mean),
        Metric("bleu_ja", bleu_ja, mean),
    ]
}


def metric_named(name: str) -> Metric:
    """The metric called `name`; a ConfigError naming it and listing the known ones otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}") from None


def score_item(metric: Metric, generated: str, reference: str) -> float:
    """One item's value from the model's raw output, extracted and normalised exactly as llm-jp-eval does."""
    return metric.item(answer_of(generated), reference_of(reference))
