"""Instruction records: load and validate them (Alpaca, chat, tool calling), their prompt formats, and
their rendering into token ids with a completion mask."""
