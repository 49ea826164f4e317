"""tsumugi serving: vLLM behind an OpenAI-compatible API."""
