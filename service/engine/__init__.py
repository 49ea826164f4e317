"""The engine boundary: the only modules that import vLLM (and xgrammar), so a vLLM upgrade touches this folder.

`client.py` runs requests (`Engine`), `args.py` turns `Settings` into vLLM's engine arguments, `grammars.py`
builds the constraints of forced tool calls, `null_adapter.py` works around vLLM's CPU LoRA slot -1,
`tool_parsers.py` wraps vLLM's tool-call parsers, and `types.py` holds the engine-neutral values the rest of
the service sees. Nothing here is imported at package import: vLLM loads only when the engine starts.
"""
