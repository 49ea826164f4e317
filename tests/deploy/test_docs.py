"""The ops guide must not rot: every repository path it names exists, and every make target it names is
defined."""

from __future__ import annotations

import re

from tests.deploy.tools import DEPLOY, ROOT

GUIDE = DEPLOY / "README.md"
PATH_PREFIXES = ("k8s/", "deploy/", "tests/deploy/", "requirements/", "Dockerfile", ".dockerignore")


def test_every_path_in_the_guide_exists():
    named = {
        token.split(" ")[0].rstrip(",.;:")
        for token in re.findall(r"`([^`\n]+)`", GUIDE.read_text())
        if token.startswith(PATH_PREFIXES)
    }
    assert len(named) > 15
    for path in named:
        expanded = path.replace("{fp16,awq,lora}", "fp16")
        assert (ROOT / expanded).exists(), f"deploy/README.md names {path}, which does not exist"


def test_every_make_target_in_the_guide_exists():
    targets = set(re.findall(r"`make ([a-z-]+)`", GUIDE.read_text())) | set(
        re.findall(r"^make ([a-z-]+)", GUIDE.read_text(), flags=re.MULTILINE)
    )
    assert targets
    makefile = (ROOT / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.MULTILINE), target
