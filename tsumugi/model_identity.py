"""Which weights a model directory holds: the identity training writes into every manifest and the service
checks an adapter's recorded base model against.

A name does not say which weights: a hub repository moves and a local directory can be overwritten. So the
identity is the name as given, the hub revision when the path is a hub-cache snapshot, and for a local
directory the SHA-256 over its weight files (each file's name and hash, in name order). Standard library only:
imported by `training/` and `service/`, and copied into both images with the `tsumugi` package.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
HUB_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(/|$)")  # huggingface_hub's cache layout


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(directory: Path) -> str | None:
    """SHA-256 over a model directory's weight files, or None when it has none (or is not a directory)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    weights = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        return None
    listing = "\n".join(f"{p.name} {file_sha256(p)}" for p in weights)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def model_identity(name: str) -> dict:
    """`{"name", "revision", "weights_sha256"}` of a base model given as a directory or a hub name."""
    path = Path(name)
    if not path.is_dir():
        return {"name": name, "revision": None, "weights_sha256": None}  # a hub name: nothing local to hash
    snapshot = HUB_SNAPSHOT.search(str(path.resolve()))
    return {"name": name, "revision": snapshot.group(1) if snapshot else None, "weights_sha256": weights_sha256(path)}
