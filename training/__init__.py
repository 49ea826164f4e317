"""tsumugi training: instruction data → LoRA/QLoRA adapters → merged or AWQ/GPTQ-quantized models.

CLI: `python -m training sft|merge|quantize|memory|demo` (see training/README.md).
"""
