"""The errors a user of `python -m training` can cause, as one family.

A `TrainingError` is a mistake in what the user asked for (a config value, a data file, a model directory, an
output path), never a bug: `python -m training` prints it as one line `error: ...` and exits with code 2,
without a traceback, so the message itself must name what to fix. Anything else is a programming error and
keeps its traceback. Standard library only: `python -m training memory` imports this and nothing heavy.
"""

from __future__ import annotations


class TrainingError(Exception):
    """A user mistake, described in one line that names what to change."""


class ConfigError(TrainingError):
    """A setting that cannot work: a config key or a command-line flag, named in the message."""


class DataError(TrainingError):
    """A record (or a whole data file) that cannot be used, with where it is: file, line or record, field."""

    @classmethod
    def in_field(cls, location: str, path: str, problem: str) -> DataError:
        """`file: line N: field 'messages[2].content': <problem>`."""
        return cls(f"{location}: field '{path}': {problem}")


class ModelError(TrainingError):
    """A model or adapter (directory or name) that this command cannot use, e.g. no config.json."""


class OutputExistsError(TrainingError, FileExistsError):
    """The output directory already exists; nothing is overwritten. Also a FileExistsError, as it was before."""
