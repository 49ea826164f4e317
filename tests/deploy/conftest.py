"""Shared fixtures: each kustomization rendered once per session by the real kubectl kustomize, and the tiny
test model (built by the serving env, which has torch; this env does not) for the tests that run the service."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import KUSTOMIZATIONS, ROOT, SERVE_PYTHON, kustomize, load_documents


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-model")
    code = "import sys; from pathlib import Path; from tests.fixtures.tiny_model import build_tiny_llama; "
    code += "build_tiny_llama(Path(sys.argv[1]))"
    subprocess.run([str(SERVE_PYTHON), "-c", code, str(out)], cwd=ROOT, check=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def rendered_text() -> dict[str, str]:
    """Kustomization name -> the YAML stream `kubectl kustomize` prints for it."""
    return {name: kustomize(path) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(scope="session")
def rendered(rendered_text) -> dict[str, list[dict]]:
    """Kustomization name -> its rendered documents."""
    return {name: load_documents(text) for name, text in rendered_text.items()}
