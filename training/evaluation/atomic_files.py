"""Output files that are complete or absent: written beside their target, flushed to disk, renamed over it.

A reader (a dashboard, a rerun, `cat`) never sees half a report or half a predictions file, and a run killed
while writing leaves the previous file, not a truncated one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """`data` into `path` in one rename; the temporary file is removed if anything fails."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
