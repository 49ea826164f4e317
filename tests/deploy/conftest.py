"""Shared fixtures: each kustomization rendered once per session by the real kubectl kustomize."""

from __future__ import annotations

import pytest

from tests.deploy.tools import KUSTOMIZATIONS, kustomize, load_documents


@pytest.fixture(scope="session")
def rendered_text() -> dict[str, str]:
    """Kustomization name -> the YAML stream `kubectl kustomize` prints for it."""
    return {name: kustomize(path) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(scope="session")
def rendered(rendered_text) -> dict[str, list[dict]]:
    """Kustomization name -> its rendered documents."""
    return {name: load_documents(text) for name, text in rendered_text.items()}
