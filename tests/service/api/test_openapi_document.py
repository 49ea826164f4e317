"""The public HTTP surface, pinned: the OpenAPI document the app serves equals the committed one.

A change to a route, a request field or a documented status shows up here as a diff to review. When the change
is deliberate, rewrite the file (`TSUMUGI_UPDATE_OPENAPI=1 make test-fast`) and commit it with the change, so
that the review sees the surface move.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.service.fake_engine import FakeEngine, fake_app

DOCUMENT = Path(__file__).with_name("openapi.json")


def test_the_openapi_document_is_the_committed_one(engine: FakeEngine, tokenizer_dir: Path) -> None:
    served = json.dumps(fake_app(engine, tokenizer_dir).openapi(), indent=1, sort_keys=True, ensure_ascii=False)
    if os.environ.get("TSUMUGI_UPDATE_OPENAPI") == "1":
        DOCUMENT.write_text(served + "\n", encoding="utf-8")
    committed = DOCUMENT.read_text(encoding="utf-8").rstrip("\n")
    assert served == committed, "the public API changed: review the diff, then see this module's docstring"
