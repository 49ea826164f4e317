"""Checkpoints that are either complete or absent, and publishing a finished directory in one rename.

HF's Trainer writes `checkpoint-N/` file by file; a kill -9 in the middle leaves a directory that
`--resume` would pick as "latest" and fail on (or worse, half-load). Here each checkpoint is written into a
staging directory and renamed into place when complete, so the newest `checkpoint-N/` is always loadable.
Under several ranks every rank writes its own RNG state into the staging directory (rank 0 everything else);
rank 0 renames it only once all ranks are done, so a checkpoint is complete for every rank or absent.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from trl import SFTTrainer

from training.errors import OutputExistsError

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


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order, drawn from (seed, epoch) alone.

    The stock sampler draws from torch's global generator, so a run resumed mid-epoch would see a different
    order than the interrupted one and end with different weights. The Trainer calls `set_epoch` each epoch.
    Every rank draws the same order; accelerate deals out its per-device batches in turn (rank r gets batches
    r, r + world_size, ...), so `batch_size` here is the global batch and the groups match a single process's."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class AtomicCheckpointSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer whose checkpoints appear atomically (staging dir + rename) and rotate afterwards, and
    whose length-grouped batches replay exactly on resume."""

    _staging = False
    _length_grouped_sampler: EpochSeededLengthGroupedSampler | None = None

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        lengths = [len(ids) for ids in dataset["input_ids"]]
        self._length_grouped_sampler = EpochSeededLengthGroupedSampler(
            batch, lengths, self.args.data_seed or self.args.seed
        )
        return self._length_grouped_sampler

    def _run_epoch(self, *args, epoch: int, **kwargs):
        """Tell the sampler its epoch directly. The Trainer's `set_epoch` goes through accelerate's wrappers, and
        on a resumed epoch under several ranks (batches skipped, then sharded) it stops one wrapper short of the
        sampler, which then replays epoch 0's order: the resumed run ended with other weights (measured)."""
        if self._length_grouped_sampler is not None:
            self._length_grouped_sampler.set_epoch(epoch)
        return super()._run_epoch(*args, epoch=epoch, **kwargs)

    def _get_output_dir(self, trial) -> str:
        base = super()._get_output_dir(trial)
        return os.path.join(base, STAGING_NAME) if self._staging else base

    def _save_checkpoint(self, model, trial) -> None:
        final_root = Path(self._get_output_dir(trial))
        staging_root = final_root / STAGING_NAME
        if self.is_world_process_zero():
            shutil.rmtree(staging_root, ignore_errors=True)
        self.accelerator.wait_for_everyone()  # no rank writes into staging before it is cleared
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every rank's files are in staging
        if self.is_world_process_zero():
            self._publish_checkpoint(final_root, staging_root)
        self.accelerator.wait_for_everyone()  # the checkpoint exists for every rank before training goes on

    def _publish_checkpoint(self, final_root: Path, staging_root: Path) -> None:
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
        raise OutputExistsError(f"{target} already exists; remove it or choose another output directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
