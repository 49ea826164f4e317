"""The tool-calling test model (tests/fixtures/tool_model.py) answers every case with its target, greedily.

In transformers, on prompts rendered as the service renders them; and vLLM's `hermes` parser (the one the
service is started with) reads the calls each target is meant to carry. No engine is started.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from tests.fixtures.tool_model import CASES, MARKER, build_tool_calling_model, prompt_ids, target_ids
from tsumugi import tool_prompt

pytestmark = pytest.mark.engine  # trains the tiny tool-calling model


@pytest.fixture(scope="module")
def model_dir(tool_model: Path) -> Path:
    return tool_model  # the session build (conftest.py), served by tool_server too


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and far faster on busy cores
    yield tokenizer, model
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_output_is_the_target(loaded, name: str) -> None:
    tokenizer, model = loaded
    case = CASES[name]
    prompt = prompt_ids(tokenizer, case.messages)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=160, do_sample=False, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    generated = out[0, len(prompt) :].tolist()
    assert tokenizer.decode(generated, skip_special_tokens=True) == case.target
    assert generated == target_ids(tokenizer, case.target)  # ends with EOS: generation stops there


@pytest.mark.parametrize("name", list(CASES))
def test_hermes_parser_reads_the_calls(loaded, name: str) -> None:
    from vllm.tool_parsers import ToolParserManager

    parser = ToolParserManager.get_tool_parser(tool_prompt.DEFAULT_TOOL_PARSER)  # what the service picks by default
    case = CASES[name]
    info = parser(loaded[0]).extract_tool_calls(case.target, request=None)  # type: ignore[arg-type]
    assert info.tools_called == bool(case.calls)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in info.tool_calls] == list(case.calls)
    assert info.content == case.content


def test_directory_is_a_served_model_directory(model_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", MARKER):
        assert (model_dir / name).exists(), name
    assert build_tool_calling_model(model_dir) == model_dir  # a finished build is reused
    assert json.loads((model_dir / MARKER).read_text())["min_margin"] >= 4.0
