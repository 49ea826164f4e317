"""OpenAI's request bodies as pydantic models: chat and text completions (`chat.py`), the Responses API
(`responses.py`). A field the client sends is validated here or refused with a 400 naming it."""
