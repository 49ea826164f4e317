"""What happens between a validated request and the engine: the prompt (`prompts.py`), the sampling values
(`sampling.py`), tool-call policy and readers (`tools.py`), and the admitted, tracked generation
(`generation.py`)."""
