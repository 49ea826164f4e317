"""`python -m training <command>`: sft, merge, quantize, memory, demo.

Heavy libraries are imported inside each command so that `memory` stays instant and torch-free.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.templates import TEMPLATE_NAMES

SFT_FLAGS = {  # CLI flag dest -> dotted config key
    "base": "base",
    "out": "out",
    "method": "method",
    "template": "data.template",
    "max_steps": "optim.max_steps",
    "epochs": "optim.epochs",
    "lr": "optim.lr",
    "scheduler": "optim.scheduler",
    "warmup_ratio": "optim.warmup_ratio",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "target_modules": "lora.target_modules",
    "batch_size": "optim.batch_size",
    "grad_accum": "optim.grad_accum",
    "seed": "seed",
    "precision": "precision",
    "max_length": "data.max_length",
    "validation_fraction": "data.validation_fraction",
    "save_steps": "save_steps",
    "eval_steps": "eval_steps",
    "gradient_checkpointing": "gradient_checkpointing",
    "packing": "data.packing",
    "skip_invalid": "data.skip_invalid",
    "resume": "resume",
    "keep_checkpoints": "keep_checkpoints",
}


def add_sft_parser(commands) -> None:
    p = commands.add_parser("sft", help="LoRA / QLoRA supervised fine-tuning")
    p.add_argument("--config", type=Path, help="YAML config; flags given here override it")
    p.add_argument("--base")
    p.add_argument("--data", nargs="+", help="Alpaca .json/.jsonl or chat .jsonl files")
    p.add_argument("--out")
    p.add_argument("--method", choices=["lora", "qlora"])
    p.add_argument("--template", choices=TEMPLATE_NAMES)
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=int)
    steps.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--scheduler", choices=["constant", "linear", "cosine", "constant_with_warmup"])
    p.add_argument("--warmup-ratio", type=float)
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-alpha", type=int)
    p.add_argument("--lora-dropout", type=float)
    p.add_argument("--target-modules", nargs="+")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--max-length", type=int)
    p.add_argument("--validation-fraction", type=float)
    p.add_argument("--save-steps", type=int)
    p.add_argument("--eval-steps", type=int)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--skip-invalid", action="store_true", default=None)
    p.add_argument("--resume", action="store_true", default=None)
    p.add_argument("--keep-checkpoints", action="store_true", default=None)


def run_sft_command(args: argparse.Namespace) -> None:
    from training.config import load_config
    from training.sft import run_sft

    overrides = {key: getattr(args, dest) for dest, key in SFT_FLAGS.items()}
    if args.epochs is not None:
        overrides["optim.max_steps"] = -1
    if args.data:
        overrides["data.paths"] = [str(p) for p in args.data]
    if args.target_modules == ["all-linear"]:
        overrides["lora.target_modules"] = "all-linear"  # peft's keyword, not a module name
    out = run_sft(load_config(args.config, overrides))
    print(f"adapter written to {out}")


def add_merge_parser(commands) -> None:
    p = commands.add_parser("merge", help="merge a LoRA adapter into its base model")
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")


def add_quantize_parser(commands) -> None:
    p = commands.add_parser("quantize", help="AWQ or GPTQ W4A16 with llm-compressor")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--method", choices=["awq", "gptq"], default="awq")
    p.add_argument("--data", required=True, type=Path, help="training data: calibration samples come from it")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--template", choices=TEMPLATE_NAMES, help="default: the model's own chat template")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--group-size", type=int, help="default: largest of 128/64/32 dividing every layer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_sft_parser(commands)
    add_merge_parser(commands)
    add_quantize_parser(commands)
    from training.demo import add_demo_parser
    from training.memory import add_memory_parser

    add_memory_parser(commands)
    add_demo_parser(commands)
    args = parser.parse_args(argv)
    from training.config import ConfigError
    from training.data import DataError

    try:
        if args.command == "sft":
            run_sft_command(args)
        elif args.command == "merge":
            from training.merge import merge_adapter

            print(f"merged model written to {merge_adapter(args.base, args.adapter, args.out, args.dtype)}")
        elif args.command == "quantize":
            from training.quantize import quantize_from_args

            print(f"quantized model written to {quantize_from_args(args)}")
        else:
            args.handler(args)
    except (DataError, ConfigError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
