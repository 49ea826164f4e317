"""Comparisons of models scored on the same items, each number with a confidence interval.

A task score over a few dozen items is a noisy estimate: two adapters 0.05 apart on 40 questions may well be
equally good. So every score in the report comes with a percentile-bootstrap interval over the items (resample
the items with replacement, recompute the task score with the metric's own aggregate, take the 2.5% and 97.5%
percentiles), which works the same for a mean, a correlation (pearson, spearman) or a judge's 1-10 score.

Comparisons are paired: every model answered the same items, so the difference of two models is bootstrapped
on the *same* resampled items for both, which cancels the item-difficulty variance that two separate intervals
would double-count. For exact match, McNemar's exact test (a two-sided binomial test on the items exactly one
of the two models got right) adds a p-value. Pairwise judge verdicts (A better, B better, tie) become a win
rate with the same bootstrap.

An item value of NaN means "no value for this item" (a judge reply that could not be parsed, even after a
retry): it is left out of that model's score and, for a comparison, the item is left out for both models. The
report says how many items each number used.

The inputs are plain typed data (`ItemScores`, `PairwiseVerdicts`) so the evaluation CLI can build them from
runner answers and metrics; `build_report` computes, `write_report` writes `report.md`, `report.json` (every
number and every per-item value, so a reader can recompute) and `report.png`, each file atomically.
"""
