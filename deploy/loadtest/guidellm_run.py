"""Run one GuideLLM scenario with our backend (token_times.py) and data kind (step_blocks.py) registered.

`python -m deploy.loadtest.guidellm_run SCENARIO.json` (in .venv-loadtest). A separate process per run, so
that several models can load one server at once (a mix) and GuideLLM's console output goes to its own log.
This is GuideLLM's documented Python entry point (`benchmark_generative_text`), not a reimplementation.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Load the scenario file GuideLLM's CLI would take with `-c`, and run it."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m deploy.loadtest.guidellm_run SCENARIO.json\n")
        return 2
    from guidellm.benchmark import BenchmarkScenario, benchmark_generative_text
    from guidellm.utils.console import Console

    # Register our backend and data kinds before the scenario naming them is read.
    import deploy.loadtest.step_blocks
    import deploy.loadtest.token_times  # noqa: F401

    scenario = BenchmarkScenario.create(scenario=Path(argv[0]))
    asyncio.run(benchmark_generative_text(args=scenario, progress=False, console=Console()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
