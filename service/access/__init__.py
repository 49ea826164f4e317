"""Who may call and how much: API keys and their tenants (`tenants.py`), admission control (`admission.py`)."""
