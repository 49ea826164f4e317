"""SFT runs on the tiny model: output layout, bad data leaves nothing behind, kill -9 + --resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.config import ConfigError, load_config
from training.sft import SFTRecipe, run_sft

from .conftest import REPO, tiny_config


def sft_command(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "training", "sft", "--base", str(base), "--data", str(data), "--out", str(out),
        "--method", "lora", "--template", "alpaca-ja", "--max-steps", "30", "--lr", "5e-3", "--lora-r", "8",
        "--lora-alpha", "16", "--batch-size", "2", "--seed", "3", "--precision", "fp32",
        "--validation-fraction", "0", "--save-steps", "5", *extra,
    ]  # fmt: skip


def adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


def test_lora_run_writes_a_complete_adapter_directory(tiny_model, tiny_eval, tmp_path):
    data = tiny_eval.with_name("train.jsonl")
    cfg = tiny_config(
        tiny_model, data, tmp_path / "adapter", **{"optim.max_steps": 12, "data.validation_fraction": 0.3}
    )
    out = run_sft(cfg)
    names = {p.name for p in out.iterdir()}
    expected = {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "tokenizer.json"}
    assert expected | {"training_manifest.json", "train_log.json", "loss_curve.png"} <= names
    assert not out.with_name("adapter.partial").exists()
    manifest = json.loads((out / "training_manifest.json").read_text(encoding="utf-8"))
    assert manifest["base_model"] == str(tiny_model) and manifest["steps"] == 12
    assert manifest["data_files"][0]["sha256"] and manifest["final_eval_loss"] is not None
    log = json.loads((out / "train_log.json").read_text(encoding="utf-8"))
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert (out / "chat_template.jinja").read_text(encoding="utf-8").count("### 指示:") == 1


def test_the_loss_head_projects_only_the_labelled_positions(tiny_model, tiny_eval, tmp_path, monkeypatch):
    """On the CPU too, TRL's fused LM head sees only the positions with a label (not the prompt's or the padding's),
    and its loss is the cross-entropy of those positions computed from the model's full logits."""
    import inspect

    import trl.trainer.utils as trl_utils

    # `score_label_positions_only` relies on TRL reading `_use_triton` for the compact-scoring choice alone.
    calls = [line.strip() for line in inspect.getsource(trl_utils).splitlines() if "_use_triton(" in line]
    assert calls == ["compact = _use_triton(hidden_states.device)"]
    cfg = tiny_config(tiny_model, tiny_eval.with_name("train.jsonl"), tmp_path / "adapter", precision="fp32")
    recipe = SFTRecipe(cfg).setup()
    projected: list[int] = []
    chunked = trl_utils._ChunkedLogProbFunction

    class CountingChunkedLogProb:
        @staticmethod
        def apply(hidden, *rest):
            projected.append(hidden.shape[0])
            return chunked.apply(hidden, *rest)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingChunkedLogProb)
    inputs = recipe.trainer._prepare_inputs(next(iter(recipe.trainer.get_train_dataloader())))
    with torch.no_grad():
        fused = recipe.trainer.model(**inputs, fused_lm_head=True)
        logits = recipe.trainer.model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    labels = inputs["labels"][:, 1:]
    labelled = labels != -100
    assert projected == [int(labelled.sum())] and 0 < labelled.sum() < labelled.numel() / 2
    expected = torch.nn.functional.cross_entropy(logits[:, :-1][labelled].float(), labels[labelled])
    assert torch.allclose(fused.loss, expected, rtol=1e-4), (fused.loss, expected)


@pytest.mark.engine  # python -m training sft in a subprocess
def test_bad_data_stops_before_anything_is_written(tiny_model, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": ""}\n')
    out = tmp_path / "adapter"
    result = subprocess.run(sft_command(tiny_model, data, out), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{data}: line 2: field 'output': is empty" in result.stderr
    assert not out.exists() and not out.with_name("adapter.partial").exists()


def test_yaml_config_with_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: m\nout: o\nlora: {r: 4}\noptim: {lr: 0.1, epochs: 2}\ndata: {paths: [d.jsonl]}\n")
    cfg = load_config(path, {"optim.lr": 0.5, "lora.alpha": None})
    assert (cfg.lora.r, cfg.lora.alpha, cfg.optim.lr, cfg.optim.epochs) == (4, 32, 0.5, 2)
    for records, problem in (
        ([], "must be a non-empty list"),
        ([1, "2"], "must be a non-empty"),
        ([3, 3], "lists a record twice"),
    ):
        with pytest.raises(ConfigError, match=f"config 'data.records': {problem}"):
            load_config(path, {"data.records": records})
    path.write_text("base: m\nout: o\nlora: {rank: 4}\n")
    with pytest.raises(ConfigError, match=r"config 'lora\.rank': unknown key"):
        load_config(path, {})


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared (exit code {process.poll()})")
        time.sleep(0.02)


@pytest.mark.engine  # python -m training sft in a subprocess
def test_kill_and_resume_matches_an_uninterrupted_run(tiny_model, tiny_eval, tmp_path):
    data = tiny_eval.with_name("train.jsonl")
    reference = tmp_path / "reference"
    subprocess.run(sft_command(tiny_model, data, reference), cwd=REPO, check=True, capture_output=True)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(sft_command(tiny_model, data, interrupted), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(interrupted.with_name("interrupted.partial") / "checkpoints" / "checkpoint-10", process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not interrupted.exists()

    resumed = subprocess.run(sft_command(tiny_model, data, interrupted, "--resume"), cwd=REPO, capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "checkpoint-" in resumed.stdout
    expected, actual = adapter_weights(reference), adapter_weights(interrupted)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4)
