"""Loading base models for training, merging and quantization.

A directory converted from GGUF (the default SmolLM2 model) holds plain safetensors, but its config.json can
still carry the GGUF `quantization_config`; transformers then refuses to train it ("GGUF does not support
training") and would write it into merged checkpoints. When the named GGUF file is not in the directory, that
entry describes nothing on disk, so it is dropped from the in-memory config.
"""

from __future__ import annotations

from pathlib import Path


def load_model_config(path: str):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    quantization = getattr(config, "quantization_config", None)
    if isinstance(quantization, dict) and quantization.get("quant_method") == "gguf":
        gguf_file = quantization.get("gguf_file") or ""
        if not (gguf_file and (Path(path) / gguf_file).is_file()):
            del config.quantization_config
    return config


def load_causal_lm(path: str, **kwargs):
    """`AutoModelForCausalLM.from_pretrained` with the config cleaned as described above."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, config=load_model_config(path), **kwargs)
