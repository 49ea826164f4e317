"""One recipe, several processes: torchrun's environment, the process group, and the work only rank 0 does.

`torchrun` (and Kubeflow Trainer's torch runtime, which starts torchrun from its `PET_*` variables) gives every
process `RANK`, `LOCAL_RANK` and `WORLD_SIZE`. Without them the run is a single process and nothing here does
anything. With them the process group is opened before the recipe touches its inputs, so that every rank can
agree on an outcome: a step that fails on any rank (bad data, an existing output, a config that does not match
the run being resumed) fails on all of them with the same one-line message, instead of one rank exiting while
the others wait at a collective. The group has a timeout, so a rank that dies without a word (kill -9, a lost
node) ends the others' waits with an error rather than a hang; on one node torchrun stops the siblings itself.
The timeout is 30 minutes (the Trainer's `ddp_timeout` default), or `TSUMUGI_PROCESS_GROUP_TIMEOUT_S` seconds:
a property of the cluster, not of the recipe, so it is not in the config that `--resume` compares.

Gloo on CPU, NCCL on CUDA. The Trainer (accelerate) finds the group already open and uses it as it is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from training.errors import ConfigError, TrainingError

T = TypeVar("T")
TIMEOUT_VARIABLE = "TSUMUGI_PROCESS_GROUP_TIMEOUT_S"
DEFAULT_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the run: its global rank, its rank on this node, and how many there are."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    timeout: timedelta = DEFAULT_TIMEOUT

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Launch:
        """torchrun's variables; a plain `python -m training sft` has none and is rank 0 of 1."""
        return cls(
            rank=int(environ.get("RANK", 0)),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
            world_size=int(environ.get("WORLD_SIZE", 1)),
            timeout=_timeout(environ.get(TIMEOUT_VARIABLE)),
        )

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run's files and speaks to the user."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self, batch_size: int, grad_accum: int) -> dict[str, int]:
        """For the manifest: how many processes, and the records one optimizer step saw."""
        return {
            "world_size": self.world_size,
            "per_device_batch_size": batch_size,
            "grad_accum": grad_accum,
            "global_batch_size": batch_size * grad_accum * self.world_size,
        }


def _timeout(seconds: str | None) -> timedelta:
    if seconds is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(seconds)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{TIMEOUT_VARIABLE} must be a number of seconds > 0, got {seconds!r}")
    return timedelta(seconds=value)


@contextmanager
def process_group(launch: Launch) -> Iterator[Launch]:
    """Open the process group for the run's duration (nothing to open for a single process), and close it."""
    if not launch.distributed or dist.is_initialized():
        yield launch
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank)  # before NCCL's first call, or every rank uses GPU 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=launch.timeout)
    try:
        yield launch
    finally:
        dist.destroy_process_group()


def barrier(launch: Launch) -> None:
    if launch.distributed:
        dist.barrier()


def agreed(launch: Launch, step: Callable[[], T]) -> T:
    """Run `step` on every rank and fail on every rank if it failed on any.

    The ranks exchange their outcome (the exception, or None), so every rank leaves together: the rank that
    failed raises its own exception (with its traceback), the others raise the lowest failing rank's error,
    naming that rank when it is not rank 0. A user mistake stays a `TrainingError` (exit 2, one line)."""
    try:
        result, failure = step(), None
    except Exception as error:  # every failure is shared below, then raised again
        result, failure = None, error
    if not launch.distributed:
        if failure is not None:
            raise failure
        return result
    outcomes: list[BaseException | None] = [None] * launch.world_size
    dist.all_gather_object(outcomes, _shareable(failure))
    if failure is not None:
        raise failure
    failed = [(rank, error) for rank, error in enumerate(outcomes) if error is not None]
    if failed:
        rank, error = failed[0]
        raise _as_seen_from(rank, error)
    return result


def on_main_rank(launch: Launch, step: Callable[[], None]) -> None:
    """Rank 0 runs `step` (a write); the other ranks wait for it and fail with it if it fails."""
    agreed(launch, step if launch.is_main else lambda: None)


def _shareable(error: BaseException | None) -> BaseException | None:
    """Our errors travel as they are; any other exception as a description (its class may not unpickle)."""
    if error is None or isinstance(error, TrainingError):
        return error
    return RuntimeError(f"{type(error).__name__}: {error}")


def _as_seen_from(rank: int, error: BaseException) -> BaseException:
    if rank == 0:
        return error
    if isinstance(error, TrainingError):
        return type(error)(f"rank {rank}: {error}")
    return RuntimeError(f"rank {rank} failed: {error}")
