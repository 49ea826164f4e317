"""`make bench-train`: tokens/s and peak RSS of our LoRA and QLoRA SFT next to plain TRL, in one run.

Baseline: TRL's `SFTTrainer` at its defaults (padding to the longest record of each batch, no packing, bf16
as TRL defaults to) with the same peft `LoraConfig` on the same records rendered in the same Alpaca-ja
prompt/completion format. Every run trains exactly one epoch over the same `steps × batch` records of the
sample, so all runs process the same real tokens (the table shows it). The model object is passed in
because TRL's own loading from the path refuses the converted SmolLM2 directory's stale GGUF quantization
entry (see training/models.py). Every run is a separate process, so peak RSS (ru_maxrss) is its own.
Tokens/s counts real (non-padding) tokens: TRL's `num_tokens`.
Results replace the `## Training` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

from tsumugi.default_model import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "BENCHMARKS.md"
BASE = REPO / DEFAULT_MODEL
DATA = REPO / "data" / "ja_sample.jsonl"
RUNS = {  # name: (method, data.packing, gradient_checkpointing) for our recipe; None: the TRL baseline
    "trl-baseline": None,
    "ours-lora": ("lora", "auto", 0.5),
    "ours-qlora": ("qlora", "auto", 0.5),
    "ours-lora-full-ckpt": ("lora", "auto", True),
    "ours-lora-no-ckpt": ("lora", "auto", False),
    "ours-lora-packed": ("lora", True, 0.5),
}
NOTES = (
    "Baseline: TRL `SFTTrainer` defaults (random batches padded to their longest record, bf16, gradient "
    "checkpointing on every layer) with the same `LoraConfig`. Ours: `data.packing: auto` (no flash-attention on "
    "CPU, so padded batches of similar-length records from the length-grouped sampler), LoRA inputs not copied "
    "to fp32 under autocast, bf16 where the CPU has native bf16, response-only loss, and gradient checkpointing "
    "on half of the decoder layers (`gradient_checkpointing: 0.5`); the `full-ckpt`/`no-ckpt` rows show the "
    "two ends of that dial. `ours-lora-packed` forces padding-free packing (one row per batch, block-diagonal "
    "mask) to show why `auto` does not pack without variable-length attention kernels. QLoRA: NF4 base with "
    "double quantisation, bf16 compute."
)
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}


def run_ours(method: str, packing: bool | str, checkpointing: bool | float, steps: int, batch: int, out: Path) -> dict:
    from training.config import load_config
    from training.sft import SFTRecipe

    cfg = load_config(None, {
        "base": str(BASE), "out": str(out), "method": method, "data.paths": [str(DATA)],
        "data.records": list(range(steps * batch)), "data.packing": packing, "gradient_checkpointing": checkpointing,
        "data.validation_fraction": 0.0,
        "optim.max_steps": steps, "optim.batch_size": batch, "optim.lr": 1e-3,
        "lora.r": LORA["r"], "lora.alpha": LORA["lora_alpha"], "lora.dropout": 0.0, "save_steps": 10_000,
    })  # fmt: skip
    recipe = SFTRecipe(cfg).setup()
    recipe.train()  # the product path, publishing included; the time is the training loop's, as for TRL
    history = recipe.trainer.state.log_history
    runtime = next(entry["train_runtime"] for entry in history if "train_runtime" in entry)
    return {"runtime_s": runtime, "tokens": _logged_tokens(history)}


def run_baseline(steps: int, batch: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from training.data.examples import render
    from training.data.records import load_records
    from training.models import load_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    rows = [render(r, "alpaca-ja", tokenizer) for r in load_records([DATA]).records[: steps * batch]]
    dataset = Dataset.from_list([{"prompt": r.prompt, "completion": r.response} for r in rows])
    # use_cpu: TRL's bf16 default is refused on a machine without a GPU unless training is placed on the CPU.
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3, report_to=[],
        save_strategy="no", logging_steps=1, use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    trainer = SFTTrainer(
        model=load_causal_lm(str(BASE), dtype="auto"), args=args, train_dataset=dataset,
        processing_class=tokenizer, peft_config=LoraConfig(**LORA),
    )  # fmt: skip
    result = trainer.train()
    return {"runtime_s": result.metrics["train_runtime"], "tokens": _logged_tokens(trainer.state.log_history)}


def _logged_tokens(history: list[dict]) -> int:
    return int(max((entry.get("num_tokens", 0) for entry in history), default=0))


def run_one(name: str, steps: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if RUNS[name] is None:
            result = run_baseline(steps, batch, Path(tmp) / "out")
        else:
            result = run_ours(*RUNS[name], steps, batch, Path(tmp) / "out")
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["tokens_per_s"] = result["tokens"] / result["runtime_s"]
    return result


def measure_all(steps: int, batch: int, rounds: int) -> dict[str, list[dict]]:
    """Every run once per round, rounds back to back, so slow drift of the machine hits all runs alike."""
    results: dict[str, list[dict]] = {name: [] for name in RUNS}
    for round_number in range(1, rounds + 1):
        for name in RUNS:
            command = [sys.executable, "-m", "training.bench", "--one", name, "--steps", str(steps),
                       "--batch", str(batch)]  # fmt: skip
            run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"{name} failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
            results[name].append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(f"round {round_number} {name}: {results[name][-1]}")  # noqa: T201 - progress of a long benchmark
    return results


def planned_peaks_gib(steps: int, batch: int) -> dict[str, float]:
    """The memory planner's predicted peak (tensors only) per run, for a batch of the longest bench record."""
    from transformers import AutoTokenizer

    from training.data.examples import build_examples
    from training.data.records import load_records
    from training.memory import plan

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    records = load_records([DATA]).records[: steps * batch]
    longest = max(len(e["input_ids"]) for e in build_examples(records, "alpaca-ja", tokenizer, 512))
    peaks = {}
    for name, settings in RUNS.items():
        method, _, checkpointing = settings or ("lora", None, True)  # TRL checkpoints every layer by default
        result = plan(str(BASE), method, batch=batch, seq_len=longest, lora_r=LORA["r"], checkpointing=checkpointing)
        peaks[name] = result.total_gib
    return peaks


def render_section(results: dict[str, list[dict]], steps: int, batch: int, planned: dict[str, float]) -> str:
    baseline = results["trl-baseline"]
    lines = [
        "## Training",
        "",
        f"`make bench-train` ({datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, CPU only, "
        f"SmolLM2-135M-Instruct, the first {steps * batch} records of data/ja_sample.jsonl in the Alpaca-ja "
        f"format, one epoch: {steps} steps × batch {batch}, LoRA r=16 all-linear; {len(baseline)} round(s), each "
        "run its own process, runs alternating within a round). Tokens are real (non-padding) tokens. "
        "× baseline: the median over rounds of (tokens/s ÷ the same round's baseline tokens/s). Planner: "
        "`python -m training memory` for the same batch at the longest record's length (tensors only; peak RSS "
        "also holds the Python/torch runtime).",
        "",
        "| run | tokens/s (median) | × baseline | per round | peak RSS MiB (max) | planner GiB | tokens |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for name, runs in results.items():
        ratios = [r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(runs, baseline, strict=True)]
        per_round = ", ".join(f"{x:.2f}" for x in ratios)
        tokens = "/".join(sorted({str(r["tokens"]) for r in runs}))
        speed, rss = median(r["tokens_per_s"] for r in runs), max(r["peak_rss_mib"] for r in runs)
        cells = [name, f"{speed:.0f}", f"{median(ratios):.2f}", per_round, f"{rss:.0f}", f"{planned[name]:.2f}", tokens]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", NOTES, ""]
    return "\n".join(lines)


def write_section(section: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the `## Training` section, leaving every other section untouched."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Training"), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        rest = ["", *lines[end:]] if end < len(lines) else []
        new = "\n".join([*lines[:start], *section.rstrip("\n").splitlines(), *rest])
    path.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.batch)))  # noqa: T201 - read by the parent process
        return
    results = measure_all(args.steps, args.batch, args.rounds)
    planned = planned_peaks_gib(args.steps, args.batch)
    write_section(render_section(results, args.steps, args.batch, planned))


if __name__ == "__main__":
    main()
