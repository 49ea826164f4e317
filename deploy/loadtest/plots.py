"""The report's two PNGs: latency against achieved request rate, throughput against load.

A sweep's steps are points on these curves. Latency is drawn against the request rate the server achieved
(GuideLLM's synchronous and throughput steps have no target rate, so achieved rate is the one axis all steps
share); throughput against mean requests in flight (Little's law from the request records), where
saturation shows as the throughput curve flattening while load keeps rising. One colour per series (a model,
or all models of a mix); p50 solid, p90 dashed, p99 dotted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt

LATENCY_PANELS = (
    ("ttft", "time to first token (ms)"),
    ("tpot", "time per output token (ms)"),
    ("itl", "inter-token latency (ms)"),
    ("e2el", "end-to-end latency (ms)"),
)
PERCENTILE_STYLES = (("p50", "-"), ("p90", "--"), ("p99", ":"))


def _points(steps: list[dict[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    pairs = sorted((step[x_key], step[y_key]) for step in steps if step[x_key] is not None and step[y_key] is not None)
    return [x for x, _ in pairs], [y for _, y in pairs]


def plot_latency(series: list[dict[str, Any]], title: str, path: Path) -> Path:
    """TTFT, TPOT, ITL and E2EL percentiles against achieved request rate, one panel each."""
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (metric, label) in zip(axes.flat, LATENCY_PANELS, strict=True):
        for index, line in enumerate(series):
            for percentile, style in PERCENTILE_STYLES:
                x, y = _points(line["steps"], "request_throughput", f"{percentile}_{metric}_ms")
                axis.plot(x, y, style, marker="o", markersize=3, color=colours[index % len(colours)],
                          label=f"{line['label']} {percentile}")  # fmt: skip
        axis.set_xlabel("achieved request rate (req/s)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_throughput(series: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Request throughput and goodput, and output token throughput, against mean requests in flight."""
    figure, (requests_axis, tokens_axis) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, line in enumerate(series):
        colour = colours[index % len(colours)]
        x, y = _points(line["steps"], "mean_concurrency", "request_throughput")
        requests_axis.plot(x, y, "-", marker="o", markersize=3, color=colour, label=f"{line['label']} throughput")
        x, y = _points(line["steps"], "mean_concurrency", "request_goodput")
        if x:
            requests_axis.plot(x, y, "--", marker="s", markersize=3, color=colour, label=f"{line['label']} goodput")
        x, y = _points(line["steps"], "mean_concurrency", "output_throughput")
        tokens_axis.plot(x, y, "-", marker="o", markersize=3, color=colour, label=line["label"])
    requests_axis.set_ylabel("requests/s")
    tokens_axis.set_ylabel("output tokens/s")
    for axis in (requests_axis, tokens_axis):
        axis.set_xlabel("mean requests in flight")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
