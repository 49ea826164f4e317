"""Served models: the base model and its adapters (`registry.py`), the runtime catalogue that loads, replaces
and retires adapters (`catalogue.py`) after its checks (`checks.py`), the watched adapter directory
(`watch.py`), and the training lineage shown for each (`lineage.py`)."""
