"""`make bench-train`: tokens/s and peak RSS of our LoRA and QLoRA SFT next to plain TRL, in one run.

Baseline: TRL's `SFTTrainer` at its defaults (padding to the longest record of each batch, no packing, bf16
as TRL defaults to) with the same peft `LoraConfig` on the same records rendered in the same Alpaca-ja
prompt/completion format. The model object is passed in because TRL's own loading from the path refuses the
converted SmolLM2 directory's stale GGUF quantization entry (see training/models.py). Every run is a separate
process, so peak RSS (ru_maxrss) is its own. Tokens/s counts real (non-padding) tokens: TRL's `num_tokens`.
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

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "BENCHMARKS.md"
BASE = REPO / "models" / "smollm2-135m-instruct"
DATA = REPO / "data" / "ja_sample.jsonl"
RUNS = ("trl-baseline", "ours-lora", "ours-qlora")
NOTES = (
    "Baseline: TRL `SFTTrainer` defaults (padding per batch, no packing, bf16) with the same `LoraConfig`. "
    "Ours: padding-free packing (position ids restart per record), bf16 where the CPU has native bf16, "
    "response-only loss. QLoRA: NF4 base with double quantisation, bf16 compute."
)
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}


def run_ours(method: str, steps: int, batch: int, out: Path) -> dict:
    from training.config import load_config
    from training.sft import SFTRecipe

    cfg = load_config(None, {
        "base": str(BASE), "out": str(out), "method": method, "data.paths": [str(DATA)],
        "data.validation_fraction": 0.0, "optim.max_steps": steps, "optim.batch_size": batch, "optim.lr": 1e-3,
        "lora.r": LORA["r"], "lora.alpha": LORA["lora_alpha"], "lora.dropout": 0.0, "save_steps": 10_000,
    })  # fmt: skip
    recipe = SFTRecipe(cfg).setup()
    result = recipe.trainer.train()
    return {"runtime_s": result.metrics["train_runtime"], "tokens": _logged_tokens(recipe.trainer.state.log_history)}


def run_baseline(steps: int, batch: int, out: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from training.data import load_records
    from training.examples import render
    from training.models import load_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    rows = [render(r, "alpaca-ja", tokenizer) for r in load_records([DATA]).records]
    dataset = Dataset.from_list([{"prompt": r.prompt, "completion": r.response} for r in rows])
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                     report_to=[], save_strategy="no", logging_steps=1)  # fmt: skip
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
        if name == "trl-baseline":
            result = run_baseline(steps, batch, Path(tmp) / "out")
        else:
            result = run_ours(name.removeprefix("ours-"), steps, batch, Path(tmp) / "out")
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["tokens_per_s"] = result["tokens"] / result["runtime_s"]
    return result


def measure_all(steps: int, batch: int) -> dict[str, dict]:
    results = {}
    for name in RUNS:
        command = [sys.executable, "-m", "training.bench", "--one", name, "--steps", str(steps), "--batch", str(batch)]
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(f"{name}: {results[name]}")  # noqa: T201 - progress of a long benchmark
    return results


def render_section(results: dict[str, dict], steps: int, batch: int) -> str:
    base = results["trl-baseline"]
    lines = [
        "## Training",
        "",
        f"`make bench-train` ({datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, CPU only, "
        f"SmolLM2-135M-Instruct, data/ja_sample.jsonl in the Alpaca-ja format, LoRA r=16 all-linear, "
        f"{steps} steps × batch {batch}). Tokens are real (non-padding) tokens; peak RSS is per process.",
        "",
        "| run | tokens/s | × baseline | peak RSS MiB | tokens | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        speedup = r["tokens_per_s"] / base["tokens_per_s"]
        lines.append(f"| {name} | {r['tokens_per_s']:.0f} | {speedup:.2f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['tokens']} | {r['runtime_s']:.1f} |")  # fmt: skip
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
        new = "\n".join([*lines[:start], *section.splitlines(), *lines[end:]])
    path.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--one", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.batch)))  # noqa: T201 - read by the parent process
        return
    write_section(render_section(measure_all(args.steps, args.batch), args.steps, args.batch))


if __name__ == "__main__":
    main()
