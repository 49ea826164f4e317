"""Checkpoints that are either complete or absent, and publishing a finished directory in one rename.

HF's Trainer writes `checkpoint-N/` file by file; a kill -9 in the middle leaves a directory that
`--resume` would pick as "latest" and fail on (or worse, half-load). Here each checkpoint is written into a
staging directory and renamed into place when complete, so the newest `checkpoint-N/` is always loadable.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from trl import SFTTrainer

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STAGING_NAME = ".staging"


def checkpoint_dirs(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    found = checkpoint_dirs(folder)
    return found[-1] if found else None


class AtomicCheckpointSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer whose checkpoints appear atomically (staging dir + rename) and rotate afterwards."""

    _staging = False

    def _get_output_dir(self, trial) -> str:
        base = super()._get_output_dir(trial)
        return os.path.join(base, STAGING_NAME) if self._staging else base

    def _save_checkpoint(self, model, trial) -> None:
        final_root = Path(self._get_output_dir(trial))
        staging_root = final_root / STAGING_NAME
        shutil.rmtree(staging_root, ignore_errors=True)
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        name = f"checkpoint-{self.state.global_step}"
        target = final_root / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging_root / name, target)
        shutil.rmtree(staging_root, ignore_errors=True)
        limit = self.args.save_total_limit
        if limit:
            for old in checkpoint_dirs(final_root)[:-limit]:
                shutil.rmtree(old)


def publish_directory(staging: Path, target: Path) -> None:
    """Move a finished directory into place in one rename (same filesystem), refusing to overwrite."""
    if target.exists():
        raise FileExistsError(f"{target} already exists; remove it or choose another output directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
