"""`--watch-adapter-dir`: adapters appear, change and disappear with the directories under `--adapter-dir`.

The admin API changes one replica; a watched directory on a shared volume changes every replica that mounts it,
with no call to make. Every few seconds the watcher lists the subdirectories of `--adapter-dir` that are
**complete**: they hold a `tsumugi-ready` marker file, written last (write the adapter, then the marker; to
change it, delete the marker, rewrite, write the marker again). Each complete directory is served under its
directory name through the same catalogue as the admin API (same checks, versions and leases):

* a new complete directory is loaded;
* a directory whose marker, config or weights changed (modification times and sizes) is loaded as a new version,
  and the old version retires when its requests end;
* a directory that disappears, or loses its marker, is retired.

A directory the checks or the engine refuse is shown `failed` in `GET /v1/adapters` and tried again only once it
changes. The watcher manages the names it loaded; a name the admin API loaded is left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path

from service.adapters.catalogue import AdapterCatalogue
from service.adapters.checks import ADAPTER_NAME
from service.errors import AdapterExists, APIError

logger = logging.getLogger(__name__)
READY_MARKER = "tsumugi-ready"
WATCH_INTERVAL_S = 5.0
Signature = tuple[tuple[str, int, int], ...]


def signature(directory: Path) -> Signature:
    """What changes when an adapter is rewritten: name, size and modification time of its files."""
    files = (READY_MARKER, "adapter_config.json", "adapter_model.safetensors")
    found = []
    for name in files:
        try:
            stat = (directory / name).stat()
        except OSError:
            continue
        found.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def complete_directories(root: Path) -> dict[str, Signature]:
    """Subdirectories with a ready marker and a usable adapter name, by name."""
    found = {}
    for directory in sorted(root.iterdir()):
        if directory.is_dir() and ADAPTER_NAME.fullmatch(directory.name) and (directory / READY_MARKER).is_file():
            found[directory.name] = signature(directory)
    return found


class AdapterDirWatcher:
    """Keeps the catalogue in step with the complete directories under the adapter root."""

    def __init__(self, catalogue: AdapterCatalogue, root: Path) -> None:
        self.catalogue = catalogue
        self.root = root
        self._seen: dict[str, Signature] = {}  # what each watched name was last loaded (or refused) from
        self._foreign: set[str] = set()  # complete directories whose name something else serves

    async def scan(self) -> None:
        current = await asyncio.to_thread(complete_directories, self.root)
        for name, seen in current.items():
            if name in self._foreign or self._seen.get(name) == seen:
                continue
            if self.catalogue.serves(name) and name in self._seen:
                await self._apply("replace", name, self.catalogue.replace(name, name))
            elif not await self._apply("add", name, self.catalogue.add(name, name)):
                self._foreign.add(name)  # the admin API (or --lora-modules) serves this name: not ours
                continue
            self._seen[name] = seen
        for name in sorted(self._seen.keys() - current.keys()):
            del self._seen[name]
            await self._apply("delete", name, self.catalogue.delete(name))
        self._foreign &= current.keys()

    async def run(self, interval: float = WATCH_INTERVAL_S) -> None:
        while True:
            try:
                await self.scan()
            except OSError as exc:  # the volume went away for a moment: keep serving, look again
                logger.warning("cannot read the adapter directory %s: %s", self.root, exc)
            await asyncio.sleep(interval)

    @staticmethod
    async def _apply(action: str, name: str, change: Awaitable[object]) -> bool:
        """Apply a change; False when the name belongs to someone else (409). A refused adapter counts as
        applied: the catalogue shows it failed, and the next change to its directory tries again."""
        try:
            await change
        except AdapterExists:
            return False
        except APIError as exc:
            logger.warning("watched adapter %s: %s refused: %s", name, action, exc.message)
        return True
