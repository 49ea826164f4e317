"""A GuideLLM dataset kind that sends new prompts at every step of a profile.

GuideLLM 0.8.1 sends a file dataset again from its first row at every step (vllm-project/guidellm#460), so
from the second step of a sweep on, a server with prefix caching (vLLM's default) answers the replayed
prompts' prefill from its cache. GuideLLM's own synthetic data avoids this through the dataset's
`set_epoch`, which GuideLLM calls with a new number before every pass over the data; this kind does the same
for our prompt file. The file holds `blocks` blocks of `rows_per_step` rows; pass number e reads block
e mod `blocks`, so as long as there are more blocks than passes, no two steps share a prompt.

Imported by `deploy.loadtest.guidellm_run` before GuideLLM reads the scenario; GuideLLM's data-loader process
imports it again when it unpickles the dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from datasets import DatasetInfo, Features, IterableDataset, Value
from datasets.iterable_dataset import ExamplesIterable
from guidellm.benchmark import BenchmarkArgs, BenchmarkScenario
from guidellm.data.deserializers import DatasetDeserializer, DatasetDeserializerFactory
from guidellm.schemas.data import DataArgs
from pydantic import Field, PositiveInt

from deploy.loadtest import STEP_BLOCKS_DATA

FEATURES = Features({"prompt": Value("string"), "output_tokens_count": Value("int64")})


@DataArgs.register(STEP_BLOCKS_DATA)
class StepBlocksDataArgs(DataArgs):
    """Where the rows are and how they are cut into per-step blocks."""

    kind: Literal["tsumugi_step_blocks"] = Field(  # type: ignore[assignment]  (= STEP_BLOCKS_DATA)
        default=STEP_BLOCKS_DATA, description="A JSON-lines prompt file read one block per profile step."
    )
    path: Path = Field(description="JSON lines with `prompt` and `output_tokens_count`.")
    rows_per_step: PositiveInt = Field(description="Rows per block; a step never needs more.")
    blocks: PositiveInt = Field(description="Blocks in the file (rows = blocks x rows_per_step).")


def _block_rows(path: str, start: int, count: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows [start, start + count) of the file, keyed by row number (HF's examples-iterable contract)."""
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(islice(lines, start, start + count), start=start):
            yield number, json.loads(line)


class StepBlocksDataset(IterableDataset):
    """An HF iterable dataset whose rows are the block of the current pass (`set_epoch`)."""

    def __init__(self, args: StepBlocksDataArgs) -> None:
        self.step_blocks_args = args
        super().__init__(ex_iterable=self._block(0), info=DatasetInfo(features=FEATURES))

    def _block(self, epoch: int) -> ExamplesIterable:
        args = self.step_blocks_args
        start = (epoch % args.blocks) * args.rows_per_step
        return ExamplesIterable(_block_rows, {"path": str(args.path), "start": start, "count": args.rows_per_step})

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._ex_iterable = self._block(epoch)


@DatasetDeserializerFactory.register(STEP_BLOCKS_DATA)
class StepBlocksDeserializer(DatasetDeserializer):
    """GuideLLM's factory calls this with the scenario's data arguments."""

    def __call__(self, config: StepBlocksDataArgs, processor_factory: Callable[[], Any], random_seed: int) -> Any:
        _ = (processor_factory, random_seed)  # prompts are already built and sized
        return StepBlocksDataset(config)


# As for the backend kind in token_times.py: a scenario naming this kind validates only after the rebuild.
BenchmarkArgs.reload_schema()
BenchmarkScenario.reload_schema()
