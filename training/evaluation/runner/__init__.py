"""Ask any OpenAI-compatible endpoint (ours, vLLM's, OpenAI's) for many answers: concurrent, retried, cached.

Models are reached only over HTTP, so the same evaluation runs against a local adapter, a vLLM server or a
hosted model. `Runner.run(endpoint, payloads)` sends each payload (an OpenAI request body without `model`)
to `/completions` when it has a `prompt` and to `/chat/completions` when it has `messages`, at most
`concurrency` at a time, and returns the answers in payload order.

Retries: 429, 502, 503, 504, connection errors and timeouts are retried up to `max_retries` times, after the
server's `Retry-After` (seconds or an HTTP date, capped at `max_retry_after_s`) or else an exponential
backoff with jitter. Any other refusal (a 4xx: unknown model, bad parameter, wrong key) is the user's to fix
and stops the run at once with the server's message, as does a 200 that is not an OpenAI answer.

Cache: with a `cache_dir`, every answer is committed to `cache_dir/answers.sqlite3` as soon as it arrives,
keyed by the sha256 of canonical JSON of (base URL, model, full request body). A run killed half-way keeps
what it got; rerunning sends only what is missing, and a complete rerun sends nothing and returns the same
answers with `cached=True`. Errors are never cached, and the API key is neither part of the key nor stored
(the same model behind a new key gives the same answers).
"""
