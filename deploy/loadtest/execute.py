"""GuideLLM's runs as processes (guidellm_run.py), while the target's prefix cache is watched.

One process per run, so that a mix's models load the server at the same time and each run keeps its own log;
only the progress lines reach the terminal.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

from deploy.loadtest.plan import REPO, LoadPlan, note
from deploy.loadtest.prefix_cache import PrefixCacheWatch
from deploy.loadtest.scenarios import GuidellmRun
from deploy.loadtest.target import auth_headers

PROGRESS = re.compile(r"Benchmark \d+ \(.*\): completed .*")


def _pump(process: subprocess.Popen[str], run: GuidellmRun) -> None:
    """Copy GuideLLM's output to its log, echoing each finished step on stderr."""
    assert process.stdout is not None
    with run.log_path.open("w", encoding="utf-8") as log:
        for line in process.stdout:
            log.write(line)
            if match := PROGRESS.search(line):
                note(f"{run.model}: {match.group(0)}")


def execute(plan: LoadPlan, runs: list[GuidellmRun]) -> PrefixCacheWatch:
    """Run GuideLLM for every run (at once for a mix, else in turn); RuntimeError with the log on failure."""
    batches = [runs] if plan.simultaneous else [[run] for run in runs]
    with PrefixCacheWatch(f"{plan.target}/metrics", auth_headers(plan.api_key)) as watch:
        for batch in batches:
            started = []
            try:
                for run in batch:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "deploy.loadtest.guidellm_run", str(run.directory / "scenario.json")],
                        cwd=REPO,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        text=True,
                        # GuideLLM's own setting; each worker is a spawned process importing torch, which
                        # costs seconds per step on a small machine and competes with a local server.
                        env={**os.environ, "GUIDELLM__MAX_WORKER_PROCESSES": str(plan.workers)},
                    )
                    pump = threading.Thread(target=_pump, args=(process, run), daemon=True)
                    pump.start()
                    started.append((run, process, pump))
                for run, process, pump in started:
                    process.wait()
                    pump.join()
                    if process.returncode != 0 or not run.report_path.exists():
                        tail = "".join(run.log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-15:])
                        raise RuntimeError(f"GuideLLM failed for {run.model} (exit {process.returncode}):\n{tail}")
            finally:
                for _, process, _ in started:
                    if process.poll() is None:
                        process.terminate()
    return watch
