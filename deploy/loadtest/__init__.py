"""Load testing for any OpenAI-compatible endpoint: glue around GuideLLM (deploy/README.md, "Load testing").

GuideLLM sends the requests and runs the profiles; this package builds its dataset from Japanese and English
prompt pools, runs it once per model (or per model at once, for a mix), and turns its per-request records into
`vllm bench serve`'s metrics, goodput and plots. Runs in `.venv-loadtest` (`make loadtest`).
"""

# The GuideLLM backend kind registered by token_times.py, and the key of GuideLLM's per-request
# `response_metrics` under which it stores token-chunk arrival times (epoch seconds from time.time(), GuideLLM's
# clock, in arrival order). Here, not in token_times.py, so that reading a report or checking flags does not
# import GuideLLM.
TOKEN_TIMES_BACKEND = "openai_http_token_times"
TOKEN_CHUNK_TIMES = "tsumugi_token_chunk_times"
# The GuideLLM data kind registered by step_blocks.py (a new block of prompts at every step).
STEP_BLOCKS_DATA = "tsumugi_step_blocks"
