"""Evaluation of fine-tuned models: llm-jp-eval v1.3.0 metrics and the `python -m training eval` commands."""
