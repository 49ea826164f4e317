"""Engine steps → the response bytes: chat and text completions (`chat.py`), the Responses API (`responses.py`)."""
