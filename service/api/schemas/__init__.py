"""OpenAI's request bodies as pydantic models: the fields both completions share (`sampling.py`), chat
(`chat.py`), text completions (`completions.py`), the Responses API (`responses.py`). A field the client sends
is validated here or refused with a 400 naming it."""
