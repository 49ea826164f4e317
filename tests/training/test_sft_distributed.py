"""`python -m training sft` under torchrun: two ranks on CPU (gloo) against one process, kill -9, errors.

Every run here is the tiny model on 12 records, 4 records per optimizer step (2 ranks x 2, or 1 process x 4), so
an epoch is 3 steps and the data order matters. Parity is close to exact in fp32 (measured: loss 9.5e-7, adapter
weights 3e-6 apart): the same records meet in each step, only the summation order of the gradient differs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.__main__ import build_parser
from training.config import ConfigError, load_config, overrides_from_flags
from training.distributed import Launch, agreed
from training.errors import DataError
from training.sft import run_sft

from .conftest import REPO, SAMPLE
from .test_sft import wait_for

pytestmark = pytest.mark.engine  # training runs in subprocesses (torchrun) and in this process

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
STEPS, SAVE_STEPS = 24, 4
PROMPTS = ["日本で一番大きい湖は？", "富士山の高さは？", "桜が咲く季節は？"]
LOSS_TOLERANCE = 1e-4  # per logged step, fp32; measured 9.5e-7


def sft_arguments(base: Path, data: Path, out: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        "-m", "training", "sft", "--base", str(base), "--data", str(data), "--out", str(out), "--method", "lora",
        "--template", "alpaca-ja", "--max-steps", str(STEPS), "--lr", "5e-3", "--scheduler", "constant",
        "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--batch-size", str(batch_size), "--seed", "3",
        "--precision", "fp32", "--validation-fraction", "0", "--save-steps", str(SAVE_STEPS), *extra,
    ]  # fmt: skip


def config_of(arguments: list[str]):
    """The config `python -m training <arguments>` would run with."""
    args = build_parser("sft").parse_args(arguments[2:])
    return load_config(None, overrides_from_flags(args))


def two_ranks(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """2 ranks x 2 records: a global batch of 4."""
    return [*TORCHRUN, *sft_arguments(base, data, out, 2, *extra)]


def losses(directory: Path) -> list[float]:
    log = json.loads((directory / "train_log.json").read_text(encoding="utf-8"))
    return [entry["loss"] for entry in log if "loss" in entry]


def greedy_replies(base: Path, adapter: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    replies = []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)  # fmt: skip
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        output = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        replies.append(output[0, ids.shape[1] :].tolist())
    return replies


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("records") / "train.jsonl"
    path.write_text("".join(SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)[:12]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_rank_run(tiny_model, records, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("two-ranks")
    result = subprocess.run(two_ranks(tiny_model, records, folder / "adapter"), cwd=REPO, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "adapter", result


@pytest.fixture(scope="module")
def one_process_run(tiny_model, records, tmp_path_factory) -> Path:
    """1 process x 4 records, in this process: the run two ranks must reproduce."""
    out = tmp_path_factory.mktemp("one-process") / "adapter"
    return run_sft(config_of(sft_arguments(tiny_model, records, out, 4)))


def test_two_ranks_publish_one_output_written_by_rank_zero(two_rank_run, one_process_run):
    out, result = two_rank_run
    assert [p.name for p in out.parent.iterdir()] == ["adapter"]  # no .partial, no second output
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one_process_run.iterdir())
    assert result.stdout.count("adapter written to") == 1  # rank 0 speaks; rank 1 prints nothing
    manifest = json.loads((out / "training_manifest.json").read_text(encoding="utf-8"))
    assert manifest["distributed"] == {"world_size": 2, "per_device_batch_size": 2, "grad_accum": 1,
                                       "global_batch_size": 4}  # fmt: skip
    assert manifest["steps"] == STEPS and len(losses(out)) == STEPS


def test_two_ranks_match_one_process_with_the_global_batch(tiny_model, two_rank_run, one_process_run):
    out, _ = two_rank_run
    expected, actual = losses(one_process_run), losses(out)
    assert len(actual) == len(expected) == STEPS
    differences = [abs(a - e) for a, e in zip(actual, expected, strict=True)]
    assert max(differences) < LOSS_TOLERANCE, differences
    assert expected[-1] < expected[0] - 1  # it learned: parity of a run that did nothing would prove little
    weights, reference = load_file(out / "adapter_model.safetensors"), load_file(
        one_process_run / "adapter_model.safetensors")  # fmt: skip
    for name in reference:
        torch.testing.assert_close(weights[name], reference[name], atol=1e-4, rtol=1e-3)
    assert greedy_replies(tiny_model, out) == greedy_replies(tiny_model, one_process_run)


def kill_run(process: subprocess.Popen) -> None:
    """SIGKILL every rank, then torchrun: a lost node, with no chance to clean up (workers have own sessions)."""
    for worker in psutil.Process(process.pid).children(recursive=True):
        os.kill(worker.pid, signal.SIGKILL)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_killed_two_rank_run_resumes_to_the_same_adapter(tiny_model, records, two_rank_run, tmp_path):
    out = tmp_path / "adapter"
    partial = tmp_path / "adapter.partial"
    process = subprocess.Popen(two_ranks(tiny_model, records, out), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(partial / "checkpoints" / f"checkpoint-{SAVE_STEPS}", process)
    kill_run(process)
    assert not out.exists()
    checkpoint = max((partial / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= {p.name for p in checkpoint.iterdir()}

    with pytest.raises(ConfigError, match=r"--resume with 1 process.*the interrupted run had 2"):
        run_sft(config_of(sft_arguments(tiny_model, records, out, 2, "--resume")))  # same config, one process

    resumed = subprocess.run(two_ranks(tiny_model, records, out, "--resume"), cwd=REPO, capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming from") == 1 and f"checkpoint-{SAVE_STEPS}" in resumed.stdout
    reference, _ = two_rank_run
    assert losses(out) == pytest.approx(losses(reference), abs=1e-5)  # every step, the replayed ones too
    expected, actual = load_file(reference / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4)


def test_an_error_on_the_ranks_is_one_line_from_rank_zero(tiny_model, records, two_rank_run):
    out, _ = two_rank_run  # exists: every rank refuses to overwrite it, before loading anything
    result = subprocess.run(two_ranks(tiny_model, records, out), cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0  # torchrun's own code (1) for "a worker failed"; each worker exited 2
    assert result.stderr.count(f"error: {out} already exists") == 1, result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr


def fail_on_rank_one(rank: int, world_size: int, rendezvous: str, outcomes: dict) -> None:
    """One rank of `test_a_failure_on_one_rank_fails_every_rank`, started by torch.multiprocessing."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    launch = Launch(rank=rank, world_size=world_size)

    def step() -> str:
        if rank == 1:
            raise DataError("train.jsonl: line 3: field 'output': is empty")
        return "read"

    try:
        agreed(launch, step)
        outcomes[rank] = "no error"
    except DataError as error:
        outcomes[rank] = str(error)
    dist.destroy_process_group()


def test_a_failure_on_one_rank_fails_every_rank(tmp_path):
    """Data that only rank 1 cannot read (a node without the file): both ranks end with rank 1's error."""
    context = torch.multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        outcomes = manager.dict()
        torch.multiprocessing.start_processes(fail_on_rank_one, args=(2, f"file://{tmp_path}/rendezvous", outcomes),
                                              nprocs=2, start_method="spawn")  # fmt: skip
        assert dict(outcomes) == {
            0: "rank 1: train.jsonl: line 3: field 'output': is empty",
            1: "train.jsonl: line 3: field 'output': is empty",
        }
