"""GET /v1/models."""

from __future__ import annotations

import pytest

from tests.service.conftest import BASE

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process


def test_lists_base_and_adapters_with_parent(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {BASE, "ada", "ja"}
    assert models[BASE].parent is None
    assert models["ada"].parent == BASE and models["ja"].parent == BASE
    assert models[BASE].max_model_len == 512
