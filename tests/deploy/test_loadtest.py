"""`make loadtest`'s tool end to end: GuideLLM (in .venv-loadtest) driving the real service on a tiny model.

The report is checked against things it does not compute itself: the service's own request counters (every
request the report counts reached the server, with the status it reports), the datasets it wrote (with
`ignore_eos`, output tokens are exactly the sampled lengths), and GuideLLM's own per-request numbers (our
TTFT is its TTFT; our TPOT, vLLM's definition, is what GuideLLM calls ITL). A mix with a model the server
does not have must show up as 404s; bad flags and an unreachable target exit 2 with one line.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.deploy.tools import ROOT, SERVE_PYTHON
from tsumugi.launcher import free_port, service_process

pytestmark = [pytest.mark.engine, pytest.mark.slow]

LOADTEST_PYTHON = ROOT / ".venv-loadtest" / "bin" / "python"
SERVED_NAME = "tiny"
API_KEY = "loadtest-key"
SLO = {"ttft_ms": 2000.0, "e2el_ms": 4000.0}
COUNTER = re.compile(r'^tsumugi_requests_total\{endpoint="chat",model="([^"]*)",status="(\d+)"\} ([0-9.e+]+)$')


@pytest.fixture(scope="module")
def service(tiny_model, tmp_path_factory) -> str:
    """The service on the tiny model with an API key; eager mode, since start-up time is all a compile buys."""
    args = ["--model", str(tiny_model), "--served-model-name", SERVED_NAME, "--api-key", API_KEY]
    args += ["--max-model-len", "512", "--enforce-eager"]
    inherited_settings = {key: None for key in os.environ if key.startswith("TSUMUGI_")}
    log = tmp_path_factory.mktemp("service") / "service.log"
    server = service_process(args, log, python=SERVE_PYTHON, env=inherited_settings, ready_timeout=240).start()
    yield server.url
    server.stop_in_background()


def served_chat_requests(url: str) -> Counter:
    """(model label, status) -> chat requests the service has counted, from its /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: Counter = Counter()
    for line in text.splitlines():
        if match := COUNTER.match(line):
            counts[(match.group(1), match.group(2))] = round(float(match.group(3)))
    return counts


def loadtest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LOADTEST_PYTHON), "-m", "deploy.loadtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_png(path: Path) -> None:
    """A real PNG: signature, an IHDR of a sensible size, IEND last."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert kind == b"IHDR" and length == 13 and 400 < width < 4000 and 300 < height < 4000, (width, height)
    assert data[-8:-4] == b"IEND" and len(data) > 20_000, path


def percentiles_ordered(step: dict) -> None:
    for metric in ("ttft", "tpot", "itl", "e2el"):
        values = [step[f"p{p}_{metric}_ms"] for p in (50, 90, 99)]
        assert all(value is not None and value > 0 for value in values), (metric, values)
        assert values == sorted(values), (metric, values)
    assert step["p50_ttft_ms"] < step["p50_e2el_ms"]


def dataset_rows(run_directory: Path) -> list[dict]:
    lines = (run_directory / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def sweep(service, tiny_model, tmp_path_factory) -> tuple[dict, Path, Counter]:
    """A 3-step sweep (synchronous, throughput, one constant rate) of 6 requests per step, with SLOs."""
    out = tmp_path_factory.mktemp("sweep")
    before = served_chat_requests(service)
    result = loadtest(
        "--target", service, "--api-key", API_KEY, "--model", SERVED_NAME, "--tokenizer", str(tiny_model),
        "--profile", "sweep", "--sweep-steps", "3", "--max-requests", "6", "--max-seconds", "60",
        "--prompt-tokens", "uniform:16:64", "--output-tokens", "uniform:4:12", "--workers", "1",
        "--slo-ttft-ms", str(SLO["ttft_ms"]), "--slo-e2el-ms", str(SLO["e2el_ms"]), "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    served = served_chat_requests(service) - before
    return json.loads((out / "report.json").read_text()), out, served


def test_sweep_counts_match_the_server_and_the_dataset(sweep):
    report, out, served = sweep
    (series,) = report["series"]
    assert [step["strategy"] for step in series["steps"]] == ["synchronous", "throughput", "constant"]
    for step in series["steps"]:
        assert (step["completed"], step["failed"], step["incomplete"], step["errors_by_status"]) == (6, 0, 0, {})
    assert served == {(SERVED_NAME, "200"): 18}, served
    # Every step sends its own block of 6 rows (3 steps + a spare block); ignore_eos makes outputs exact.
    rows = dataset_rows(out / "guidellm" / SERVED_NAME)
    assert len(rows) == 6 * 4
    blocks = [step["dataset_blocks"] for step in series["steps"]]
    assert blocks == [[0], [1], [2]], blocks
    for step, (block,) in zip(series["steps"], blocks, strict=True):
        expected_output = sum(row["output_tokens_count"] for row in rows[block * 6 : (block + 1) * 6])
        assert step["total_output_tokens"] == expected_output
    japanese = sum(1 for row in rows if re.search(r"[ぁ-んァ-ン一-龥]", row["prompt"]))
    assert japanese == report["workload"]["datasets"][SERVED_NAME]["japanese_rows"]


def test_sweep_metrics_are_consistent(sweep):
    report, _, _ = sweep
    for step in report["series"][0]["steps"]:
        percentiles_ordered(step)
        assert step["duration"] > 0 and step["request_throughput"] == pytest.approx(6 / step["duration"], rel=1e-3)
        assert step["output_throughput"] >= step["request_throughput"]
        assert 0 < step["request_goodput"] <= step["request_throughput"]
        assert step["prefix_cache_hit_rate"] is not None  # the service exposes vLLM's prefix-cache counters
    steps = report["series"][0]["steps"]
    assert steps[1]["mean_concurrency"] > steps[0]["mean_concurrency"]  # throughput sends all 6 at once
    assert report["slo"] == SLO and report["mix"] == "sequential"
    assert "loadtest-key" not in json.dumps(report)


def test_sweep_agrees_with_guidellms_own_numbers_and_vllms_goodput(sweep):
    """TTFT is GuideLLM's TTFT; vLLM's TPOT is GuideLLM's per-request "ITL"; goodput recounted by hand."""
    report, out, _ = sweep
    benchmarks = json.loads((out / report["guidellm_reports"][0]).read_text())["benchmarks"]
    for step, benchmark in zip(report["series"][0]["steps"], benchmarks, strict=True):
        requests = benchmark["requests"]["successful"]
        theirs_ttft = sum(r["time_to_first_token_ms"] for r in requests) / len(requests)
        theirs_itl = [r["inter_token_latency_ms"] for r in requests if r["inter_token_latency_ms"] is not None]
        assert step["mean_ttft_ms"] == pytest.approx(theirs_ttft, abs=1.0)
        assert step["mean_tpot_ms"] == pytest.approx(sum(theirs_itl) / len(theirs_itl), abs=1.0)
        good = 0
        for r in requests:
            times = r["response_metrics"]["tsumugi_token_chunk_times"]
            start = r["info"]["timings"]["request_start"]
            assert len(times) == r["info"]["timings"]["token_iterations"]
            ttft_ms, e2el_ms = (times[0] - start) * 1000, (times[-1] - start) * 1000
            good += ttft_ms <= SLO["ttft_ms"] and e2el_ms <= SLO["e2el_ms"]
        assert step["request_goodput"] == pytest.approx(good / step["duration"], rel=1e-3)


def test_sweep_plots_are_pngs(sweep):
    report, out, _ = sweep
    assert report["plots"] == ["latency.png", "throughput.png"]
    for name in report["plots"]:
        assert_png(out / name)


def test_mix_with_an_unknown_model_counts_404s(service, tiny_model, tmp_path):
    """Two models at once, one the server lacks: its requests fail with 404 and are counted by status."""
    before = served_chat_requests(service)
    result = loadtest(
        "--target", service, "--api-key", API_KEY, "--model", f"{SERVED_NAME}=1", "--model", "no-such-model=1",
        "--tokenizer", str(tiny_model), "--profile", "concurrent", "--concurrency", "2", "--max-requests", "6",
        "--prompt-tokens", "24", "--output-tokens", "6", "--workers", "1", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no-such-model is not in" in result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mix"] == "simultaneous"
    by_label = {series["label"]: series["steps"] for series in report["series"]}
    assert list(by_label) == ["all models", SERVED_NAME, "no-such-model"]
    counts = {label: [(s["completed"], s["failed"], s["errors_by_status"]) for s in steps] for label, steps in
              by_label.items()}  # fmt: skip
    assert counts == {
        "all models": [(3, 3, {"404": 3})],
        SERVED_NAME: [(3, 0, {})],
        "no-such-model": [(0, 3, {"404": 3})],
    }
    assert by_label["all models"][0]["streams"] == 2 and by_label[SERVED_NAME][0]["streams"] == 1
    assert (
        by_label[SERVED_NAME][0]["total_output_tokens"] == 18 and by_label["all models"][0]["request_goodput"] is None
    )
    served = served_chat_requests(service) - before
    assert served == {(SERVED_NAME, "200"): 3, ("unknown", "404"): 3}, served


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompt-tokens", "normal:abc:1"], "bad length distribution"),
        (["--profile", "constant"], "needs --rate"),
        (["--api-key", "wrong-key"], "refused the API key"),
        (["--model", "tiny=-1"], "weight must be > 0"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_flags_exit_2_with_one_line(service, flags, message):
    result = loadtest("--target", service, *flags, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unreachable_target_exits_2():
    result = loadtest("--target", f"http://127.0.0.1:{free_port()}", timeout=120)
    assert result.returncode == 2 and "cannot reach" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
