"""Before/after demos: fine-tune a small model on a sample, then ask the base and the adapter the held-in
questions through the real service (`python -m training demo`, `tool-demo`)."""
