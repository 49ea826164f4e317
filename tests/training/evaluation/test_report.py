"""The evaluation report: bootstrap intervals, paired differences, McNemar's test, win rates, and the files."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
from scipy.stats import pearsonr

from training.errors import TrainingError
from training.evaluation.report.model import ItemScores, PairwiseVerdicts, ReportError, Settings
from training.evaluation.report.render import REPORT_FILES, render_markdown, write_report
from training.evaluation.report.statistics import bootstrap_ci, build_report, mcnemar


def mean_of(values: np.ndarray):
    return lambda indices: float(np.mean(values[indices]))


def pearson(values: Sequence[float], references: Sequence[str]) -> float:
    """A correlation aggregate as llm-jp-eval's pearson metric has it: item values against numeric references."""
    return float(pearsonr(np.asarray(values, dtype=float), [float(r) for r in references])[0])


def exact(model: str, values: list[int], task: str = "ja_qa") -> ItemScores:
    return ItemScores(model, task, "exact_match", values, [f"answer {n}" for n in range(len(values))])


def test_bootstrap_interval_of_a_proportion_contains_it_matches_the_normal_width_and_narrows_with_n():
    small = np.array([1.0] * 30 + [0.0] * 20)  # 0.6 on 50 items
    large = np.tile(small, 16)  # 0.6 on 800 items
    low_small, high_small = bootstrap_ci(mean_of(small), len(small))
    low_large, high_large = bootstrap_ci(mean_of(large), len(large))
    assert low_small < 0.6 < high_small and low_large < 0.6 < high_large
    # The normal approximation's width, 2 * 1.96 * sqrt(p (1 - p) / n), within 10%.
    for (low, high), n in (((low_small, high_small), 50), ((low_large, high_large), 800)):
        assert high - low == pytest.approx(2 * 1.96 * math.sqrt(0.6 * 0.4 / n), rel=0.1)
    assert (high_large - low_large) < (high_small - low_small) / 3  # sqrt(16) = 4 in theory


def test_bootstrap_interval_is_reproducible_from_its_seed():
    values = np.random.default_rng(0).normal(size=30)
    first = bootstrap_ci(mean_of(values), len(values), seed=3)
    assert bootstrap_ci(mean_of(values), len(values), seed=3) == first
    assert bootstrap_ci(mean_of(values), len(values), seed=4) != first


def test_bootstrap_leaves_out_resamples_where_the_statistic_is_not_finite():
    values = np.array([0.0, 1.0, 2.0, 3.0])

    def first_item_only_defined_when_drawn(indices: np.ndarray) -> float:
        return float(np.mean(values[indices])) if 0 in indices else math.nan

    low, high = bootstrap_ci(first_item_only_defined_when_drawn, len(values), resamples=500)
    assert math.isfinite(low) and math.isfinite(high) and low <= high


def test_scores_are_the_aggregate_over_all_items_with_an_interval_around_them():
    report = build_report([exact("base", [1, 1, 0, 1, 0, 1, 1, 0, 1, 1])])
    (score,) = report.scores
    assert (score.model, score.task, score.metric, score.n, score.excluded) == ("base", "ja_qa", "exact_match", 10, 0)
    assert score.interval.estimate == pytest.approx(0.7)
    assert score.interval.low < 0.7 < score.interval.high


def test_paired_difference_of_identical_models_is_exactly_zero():
    values = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0]
    report = build_report([exact("base", values), exact("copy", values)])
    (difference,) = report.differences
    assert (difference.interval.estimate, difference.interval.low, difference.interval.high) == (0.0, 0.0, 0.0)
    assert (difference.mcnemar.b, difference.mcnemar.c, difference.mcnemar.p_value) == (0, 0, 1.0)


def test_paired_difference_resamples_the_same_items_for_both_models():
    """B is A with one more item right, so a resample's difference is minus the times that item was drawn,
    over 20: never positive, and -3/20 at the 2.5% percentile (Binomial(20, 1/20) >= 3 has probability 7.5%).
    Unpaired, the two 0.5-ish accuracies would each have an interval about 0.45 wide."""
    a = [1, 0] * 10
    b = [*a[:-1], 1]
    report = build_report([exact("a", a), exact("b", b)])
    (difference,) = report.differences
    assert difference.interval.estimate == pytest.approx(-0.05)
    assert difference.interval.high == 0.0
    assert difference.interval.low == pytest.approx(-0.15)


def test_mcnemar_is_the_exact_two_sided_binomial_on_discordant_items():
    # 7 items only A right, 1 only B right, 5 both, 3 neither: P(X <= 1 | n=8, p=1/2) = 9/256, two-sided 18/256.
    a = [1] * 7 + [0] * 1 + [1] * 5 + [0] * 3
    b = [0] * 7 + [1] * 1 + [1] * 5 + [0] * 3
    test = mcnemar(a, b)
    assert (test.b, test.c) == (7, 1)
    assert test.p_value == pytest.approx(18 / 256)
    (difference,) = build_report([exact("a", a), exact("b", b)]).differences
    assert difference.mcnemar == test


def test_mcnemar_needs_binary_values():
    with pytest.raises(ReportError, match="0 or 1"):
        mcnemar([1.0, 0.5], [1.0, 0.0])


def test_a_correlation_aggregate_works_through_the_bootstrap():
    rng = np.random.default_rng(0)
    truth = np.linspace(0, 5, 60)
    close = truth + rng.normal(scale=0.5, size=60)
    noisy = truth + rng.normal(scale=3.0, size=60)
    references = [f"{value:.3f}" for value in truth]
    scores = [
        ItemScores("close", "jsts", "pearson", close, references, pearson),
        ItemScores("noisy", "jsts", "pearson", noisy, references, pearson),
    ]
    report = build_report(scores)
    close_score, noisy_score = report.scores
    assert close_score.interval.estimate == pytest.approx(pearson(close, references))
    assert close_score.interval.low < close_score.interval.estimate < close_score.interval.high <= 1
    assert noisy_score.interval.high < close_score.interval.low
    (difference,) = report.differences
    assert difference.mcnemar is None
    assert difference.interval.low > 0


def test_judge_scores_leave_out_items_without_a_value_and_pair_on_the_items_both_have():
    nan = math.nan
    judge_a = ItemScores("a", "judge", "judge_score", [8, nan, 6, 7], [""] * 4, item_ids=["q1", "q2", "q3", "q4"])
    judge_b = ItemScores("b", "judge", "judge_score", [6, 9, nan, 5], [""] * 4, item_ids=["q1", "q2", "q3", "q4"])
    report = build_report([judge_a, judge_b])
    score_a, score_b = report.scores
    assert (score_a.n, score_a.excluded, score_a.interval.estimate) == (3, 1, pytest.approx(7.0))
    assert (score_b.n, score_b.excluded, score_b.interval.estimate) == (3, 1, pytest.approx(20 / 3))
    (difference,) = report.differences
    assert (difference.n, difference.interval.estimate) == (2, pytest.approx(2.0))  # q1 and q4: (8-6 + 7-5) / 2
    assert "7.000 [" in render_markdown(report) and "(n=3)" in render_markdown(report)


def test_win_rate_counts_ties_as_half_and_leaves_out_failures():
    verdicts = PairwiseVerdicts("lora", "base", "judge", ["A", "A", "tie", "B", None])
    (win_rate,) = build_report([], [verdicts]).win_rates
    assert (win_rate.wins, win_rate.ties, win_rate.losses, win_rate.excluded) == (2, 1, 1, 1)
    assert win_rate.interval.estimate == pytest.approx(2.5 / 4)
    assert 0 <= win_rate.interval.low <= 0.625 <= win_rate.interval.high <= 1


def test_scores_on_different_items_are_refused():
    with pytest.raises(ReportError, match="same items in the same order") as raised:
        build_report([exact("a", [1, 0, 1]), exact("b", [1, 0])])
    assert isinstance(raised.value, TrainingError)
    judged = [
        ItemScores(m, "judge", "judge_score", [7, 8], ["", ""], item_ids=ids) for m, ids in (("a", "12"), ("b", "21"))
    ]
    with pytest.raises(ReportError, match="same items in the same order"):
        build_report(judged)
    other = ItemScores("c", "ja_qa", "exact_match", [1, 0, 1], ["x", "y", "z"])
    with pytest.raises(ReportError, match="different references"):
        build_report([exact("a", [1, 0, 1]), other])
    with pytest.raises(ReportError, match="twice"):
        build_report([exact("a", [1, 0, 1]), exact("a", [1, 1, 1])])
    with pytest.raises(ReportError, match="not A, B or tie"):
        PairwiseVerdicts("a", "b", "judge", ["A", "win"])


def test_write_report_writes_markdown_json_and_png(tmp_path):
    nan = math.nan
    scores = [
        exact("base", [1, 1, 1, 1]),
        exact("lora", [0, 0, 0, 0]),
        ItemScores("base", "judge", "judge_score", [7, 7, nan], [""] * 3, item_ids=["q1", "q2", "q3"]),
        ItemScores("lora", "judge", "judge_score", [9, 9, 9], [""] * 3, item_ids=["q1", "q2", "q3"]),
    ]
    report = build_report(scores, [PairwiseVerdicts("lora", "base", "judge", ["A", "tie", None])])
    written = write_report(report, tmp_path / "out")

    assert [path.name for path in written] == list(REPORT_FILES)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES)  # no temporary left
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| model | ja_qa / exact_match | judge / judge_score |" in markdown
    assert "| items | 4 | 3 |" in markdown
    assert "| base | 1.000 [1.000, 1.000] | 7.000 [7.000, 7.000] (n=2) |" in markdown
    assert "| lora | 0.000 [0.000, 0.000] | 9.000 [9.000, 9.000] |" in markdown
    assert "| base − lora | +1.000 [+1.000, +1.000] | -2.000 [-2.000, -2.000] (n=2) |" in markdown
    assert "| ja_qa | exact_match | base vs lora | 4 | 0 | 0.125 |" in markdown  # 2 * (1/2)^4
    assert "| judge | lora vs base | 1 | 1 | 0 | 1 | 0.750 [" in markdown
    assert "95% percentile bootstrap over items (2000 resamples, seed 0)" in markdown

    data = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    settings = {"method": "percentile bootstrap over items", "resamples": 2000, "confidence": 0.95, "seed": 0}
    assert data["settings"] == settings
    judge_base = next(item for item in data["items"] if item["model"] == "base" and item["task"] == "judge")
    assert judge_base["values"] == [7.0, 7.0, None] and judge_base["item_ids"] == ["q1", "q2", "q3"]
    assert judge_base["aggregate"].endswith("mean_aggregate")
    assert data["differences"][0]["mcnemar"] == {"b": 4, "c": 0, "p_value": 0.125}
    assert data["verdicts"][0]["verdicts"] == ["A", "tie", None]

    png = (tmp_path / "out" / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_settings_change_the_interval_and_are_reported():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    narrow = build_report([exact("a", values)], settings=Settings(confidence=0.5, resamples=500, seed=1))
    wide = build_report([exact("a", values)], settings=Settings(confidence=0.99, resamples=500, seed=1))
    assert (narrow.scores[0].interval.high - narrow.scores[0].interval.low) < (
        wide.scores[0].interval.high - wide.scores[0].interval.low
    )
    assert "50% percentile bootstrap over items (500 resamples, seed 1)" in render_markdown(narrow)
