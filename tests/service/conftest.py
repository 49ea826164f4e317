"""Session fixtures: a tiny model with two adapters served by the real service (vLLM CPU engine, uvicorn).

Engines start once per session (20-60 s each on 2 cores): the main server carries the tiny model, two
adapters (one with its own chat template), `--max-loras 1` (the hardest slot setting for isolation) and an
API key, so every `/v1` test also exercises auth.

The servers a test file starts for one purpose (drain, disconnect, overload, a killed engine, the router's
replicas, the default model, ...) pass `--enforce-eager`: vLLM 0.32 on the CPU compiles the model again on every
start (its compile cache fails to load), and their few requests do not pay back those 6-60 s. The tool server
here is the compiled path (the main server carries adapters, and vLLM never compiles a LoRA model on the CPU).
Fixtures stop their servers in the background (`ServerProcess.stop_in_background`): the next test need not
wait for vLLM's 5 s shutdown.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.fixtures.adapters import ALPACA_JA_TEMPLATE, write_random_adapter
from tests.fixtures.tiny_model import build_tiny_llama, build_tokenizer
from tests.fixtures.tool_model import MAX_MODEL_LEN, build_tool_calling_model
from tests.service.fake_engine import FakeEngine
from tsumugi.launcher import ServerProcess, service_process

API_KEY = "test-key-123"
BASE = "tiny"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "ada": write_random_adapter(tiny_model, root / "ada", seed=1),
        "ja": write_random_adapter(tiny_model, root / "ja", seed=2, chat_template=ALPACA_JA_TEMPLATE),
    }


@pytest.fixture(scope="session")
def server(tiny_model: Path, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    args = [
        "--model", str(tiny_model),
        "--served-model-name", BASE,
        "--lora-modules", *(f"{name}={path}" for name, path in adapters.items()),
        "--max-loras", "1",
        "--max-lora-rank", "8",
        "--max-model-len", "512",
        "--api-key", API_KEY,
    ]  # fmt: skip
    proc = service_process(args, tmp_path_factory.mktemp("logs") / "server.log").start()
    yield proc
    proc.stop_in_background()


@pytest.fixture(scope="session")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model fine-tuned to call tools in the default format (tests/fixtures/tool_model.py)."""
    return build_tool_calling_model(tmp_path_factory.mktemp("models") / "tool-llama")


@pytest.fixture(scope="session")
def tool_server(tool_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tool model served with `tool_choice: "auto"` enabled; the parser is the default format's (hermes)."""
    args = [
        "--model", str(tool_model),
        "--served-model-name", "tool",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--enable-auto-tool-choice",
        "--no-auth",
    ]  # fmt: skip
    proc = service_process(args, tmp_path_factory.mktemp("logs") / "tool-server.log").start()
    yield proc
    proc.stop_in_background()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


# ---- fast, in-process tests (fake_engine.py) ----------------------------------------------------------------
@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fake-tokenizer")
    build_tokenizer(out)
    return out


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()
