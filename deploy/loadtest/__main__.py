"""`python -m deploy.loadtest`: load-test an OpenAI-compatible endpoint with GuideLLM, report as vLLM would.

    .venv-loadtest/bin/python -m deploy.loadtest --target http://127.0.0.1:8000 \\
        --model models/smollm2-135m-instruct --profile sweep --slo-ttft-ms 2000 --out runs/loadtest/x

Steps (cli.py calls them in order): check the flags into a plan (plan.py); check the target answers
/v1/models (target.py); write one dataset per model (scenarios.py, dataset.py); run GuideLLM once per model,
one after another, or all at once with the load split by weight for a mix under a rate or concurrency
profile (execute.py, guidellm_run.py, token_times.py); read GuideLLM's per-request records into vLLM's
metrics (report.py, metrics.py); write report.json, latency.png and throughput.png. Bad flags and an
unreachable target exit 2 with one line on stderr; a GuideLLM failure exits 1 with its log's tail.
"""

import sys

from deploy.loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main())
