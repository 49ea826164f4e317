"""The SFT recipe: LoRA or QLoRA fine-tuning of a causal LM on instruction data, with TRL's SFTTrainer.

Our part is the recipe around the trainer: validated data rendered with the chosen prompt format and a
response-only loss mask, batches without padding waste (padding-free packing where the attention kernel
handles variable-length rows, padded batches of similar-length records elsewhere), atomic checkpoints and
exact resume, and an output directory that appears in one rename when training has finished. The run
lives in `<out>.partial/` until then; `--resume` continues from its newest checkpoint.

The published adapter directory holds the peft adapter (loadable by vLLM as a LoRA module), the tokenizer
with the training prompt format as its chat template, `training_manifest.json`, `train_log.json` and
`loss_curve.png`.

Under `torchrun` every rank runs this recipe (training/distributed.py): DDP around the peft model, each rank a
shard of every global batch, and rank 0 alone writing the work directory, the checkpoints' shared files and the
output. `optim.batch_size` stays what one device holds (the memory knob); one optimizer step sees
`batch_size x grad_accum x world_size` records, the same records in the same order as a single process whose
`batch_size x grad_accum` is that product (tests/training/test_sft_distributed.py).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
import trl.trainer.utils as trl_utils
from datasets import Dataset
from peft import LoraConfig
from peft.helpers import disable_input_dtype_casting
from transformers import AutoTokenizer, BitsAndBytesConfig, TrainerCallback
from transformers.modeling_layers import GradientCheckpointingLayer
from trl import SFTConfig as TrlSFTConfig

from training.checkpoints import AtomicCheckpointSFTTrainer, latest_checkpoint, publish_directory
from training.config import SFTConfig
from training.data.examples import adapter_chat_template, build_examples
from training.data.records import Record, load_records, select_records, split_records
from training.distributed import Launch, agreed, on_main_rank, process_group
from training.errors import ConfigError, ModelError, OutputExistsError
from training.licences import assess
from training.manifest import build_manifest, write_loss_curve, write_manifest
from training.models import load_causal_lm

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_TRL_COMPACTS_ON = trl_utils._use_triton


def _compact_on_every_device(device: torch.device) -> bool:
    return device.type == "cpu" or _TRL_COMPACTS_ON(device)


def score_label_positions_only() -> None:
    """Make TRL's fused LM head project only the positions that carry a label, on the CPU too.

    TRL 1.16's SFT loss (`trl.trainer.utils.add_fused_lm_head`) projects only the labelled positions where its
    Triton kernels run (CUDA, XPU) and every position elsewhere, so that compilers which specialise on shapes
    (Neuron) need not recompile for each batch. On the CPU, which runs eagerly, it sent every prompt and padding
    position through the 49k-token head and TRL's fp32 torch fallback: with the tool demo's records (300-token
    prompts, 40-token answers) about half of each step. Projecting the labelled positions only gives the same
    per-token loss at 1.9x the steps per second (BENCHMARKS.md). That module reads `_use_triton` for this
    choice alone (tests/training/test_sft.py checks it); TRL picks its tile kernels in `trl.kernels`, untouched.
    """
    trl_utils._use_triton = _compact_on_every_device


class SFTRecipe:
    """One fine-tuning run: `SFTRecipe(cfg).setup()`, then `.train()` returns the published directory."""

    def __init__(self, cfg: SFTConfig, launch: Launch | None = None) -> None:
        self.cfg = cfg
        self.launch = launch or Launch()
        self.out_dir = Path(cfg.out)
        self.work_dir = self.out_dir.with_name(self.out_dir.name + ".partial")
        self.checkpoint_dir = self.work_dir / "checkpoints"
        self.dtype = self._choose_dtype()
        self.packing = self._choose_packing()
        self.tokenizer = None
        self.model = None
        self.trainer = None
        self.splits: dict[str, list[Record]] = {}
        self.datasets: dict[str, Dataset] = {}
        self.skipped_records: list[str] = []
        self.records_per_file: dict[str, int] = {}
        self.licence: dict = {}

    def setup(self) -> SFTRecipe:
        """Build everything in dependency order. Data is validated first, before the tokenizer, before anything is
        written and before the (possibly large) model loads, so bad data fails fast and leaves no trace on disk.
        Under several ranks each check runs on every rank and fails on all if it fails on one; the work directory
        is rank 0's to write, and the others wait for it."""
        agreed(self.launch, self._check_inputs)
        on_main_rank(self.launch, self._prepare_work_dir)
        self._setup_model()
        self._setup_trainer()
        return self

    def _check_inputs(self) -> None:
        if self.out_dir.exists():
            raise OutputExistsError(f"{self.out_dir} already exists; remove it or choose another --out")
        self._load_data()
        self._check_licences()
        self._setup_tokenizer()
        self._build_datasets()

    def _choose_dtype(self) -> torch.dtype:
        if self.cfg.precision != "auto":
            return DTYPES[self.cfg.precision]
        if self.cfg.method == "qlora":
            return torch.bfloat16  # QLoRA's compute dtype; bitsandbytes 0.50 runs it on CPU too
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # On CPUs with native bf16 matmuls (AVX512-BF16 / AMX) a bf16 LoRA step is ~3x faster than fp32
        # (SmolLM2, 2 cores: 5 s vs 16 s per batch of 8); elsewhere bf16 is emulated and slower.
        native_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        native_bf16 = native_bf16 or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return torch.bfloat16 if native_bf16 else torch.float32

    def _choose_packing(self) -> bool:
        """Padding-free packing pays only where attention runs per record (flash-attention's variable-length
        kernels). Under SDPA or eager attention a packed row is one long sequence with a block-diagonal mask:
        correct, but attention work grows with the square of the row instead of each record's length. Measured
        here (CPU, SmolLM2, LoRA, 8 records of ~144 tokens): 203 real tokens/s packed vs 241 padded. Without
        such kernels, padded batches of similar-length records (HF's length-grouped sampler) waste almost no
        padding and keep attention per record."""
        if self.cfg.data.packing != "auto":
            return bool(self.cfg.data.packing)
        return varlen_attention_available()

    def _prepare_work_dir(self) -> None:
        saved_config = self.work_dir / "sft_config.json"
        saved_launch = self.work_dir / "launch.json"
        if self.cfg.resume and saved_config.exists():
            previous = json.loads(saved_config.read_text(encoding="utf-8"))
            current = self.cfg.to_dict()
            differing = sorted(k for k in current if k != "resume" and previous.get(k) != current[k])
            if differing:
                raise ConfigError(f"--resume with a different config than the interrupted run: {differing}")
            self._check_same_world_size(saved_launch)
        elif self.work_dir.exists():
            shutil.rmtree(self.work_dir)  # an earlier interrupted run that is not being resumed
        self.work_dir.mkdir(parents=True, exist_ok=True)
        saved_config.write_text(json.dumps(self.cfg.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
        saved_launch.write_text(json.dumps({"world_size": self.launch.world_size}), encoding="utf-8")

    def _check_same_world_size(self, saved_launch: Path) -> None:
        """The global batch, each rank's share of it and the per-rank RNG states in a checkpoint all depend on
        the number of processes, so a run resumes only with as many as it was interrupted with."""
        previous = json.loads(saved_launch.read_text(encoding="utf-8"))["world_size"] if saved_launch.exists() else 1
        if previous != self.launch.world_size:
            raise ConfigError(
                f"--resume with {self.launch.world_size} process(es); the interrupted run had {previous}: "
                "resume it with the same torchrun --nnodes x --nproc-per-node"
            )

    def _setup_tokenizer(self) -> None:
        """The first use of `base`, so a base that is neither a model directory nor a reachable hub name fails
        here, as one line (transformers' OSError spans several)."""
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.cfg.base)
        except OSError as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ModelError(f"base model {self.cfg.base!r} cannot be loaded: {first_line}") from error
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _check_licences(self) -> None:
        """The declared terms of the base model and data against `intended_use` (training/licences.py): a conflict
        stops the run here, before the model loads or anything is written, unless the risk is accepted with a
        reason. After the data check, so a missing data file is reported as that."""
        cfg = self.cfg
        self.licence = assess(cfg.base, list(cfg.data.paths), cfg.intended_use, cfg.accept_licence_risk)

    def _load_data(self) -> None:
        """Read, validate, select and split the records: no tokenizer needed, so this runs first."""
        data = self.cfg.data
        loaded = load_records([Path(p) for p in data.paths], skip_invalid=data.skip_invalid)
        self.skipped_records = loaded.skipped
        self.records_per_file = loaded.records_per_file
        for message in loaded.skipped if self.launch.is_main else ():
            print(f"skipped invalid record: {message}")  # noqa: T201 - the user asked to skip; say what
        if loaded.skipped and self.launch.is_main:
            print(f"skipped {len(loaded.skipped)} invalid record(s)")  # noqa: T201
        selected = select_records(loaded.records, data.records)
        train, validation = split_records(selected, data.validation_fraction, self.cfg.seed)
        self.splits = {name: records for name, records in (("train", train), ("validation", validation)) if records}

    def _build_datasets(self) -> None:
        data = self.cfg.data
        for name, records in self.splits.items():
            examples = build_examples(records, data.template, self.tokenizer, data.max_length)
            self.datasets[name] = Dataset.from_list(examples)

    def _setup_model(self) -> None:
        kwargs: dict = {"dtype": self.dtype}
        if self.packing and varlen_attention_available():
            kwargs["attn_implementation"] = "flash_attention_2"
        if self.cfg.method == "qlora":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            if torch.cuda.is_available():
                kwargs["device_map"] = {"": torch.cuda.current_device()}
        # Not peft's prepare_model_for_kbit_training: it upcasts every unquantised weight to fp32
        # (+2.5 GiB and -25% speed on an 8B QLoRA); TRL enables input gradients for checkpointing itself.
        self.model = load_causal_lm(self.cfg.base, **kwargs)
        # from_pretrained returns eval mode, where HF silently skips gradient checkpointing.
        self.model.train()

    def _training_arguments(self) -> TrlSFTConfig:
        cfg, optim = self.cfg, self.cfg.optim
        has_validation = "validation" in self.datasets
        return TrainingArguments(
            output_dir=str(self.checkpoint_dir),
            per_device_train_batch_size=optim.batch_size,
            per_device_eval_batch_size=optim.batch_size,
            gradient_accumulation_steps=optim.grad_accum,
            learning_rate=optim.lr,
            lr_scheduler_type=optim.scheduler,
            warmup_steps=optim.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
            weight_decay=optim.weight_decay,
            num_train_epochs=optim.epochs,
            max_steps=optim.max_steps,
            seed=cfg.seed,
            data_seed=cfg.seed,
            bf16=self.dtype == torch.bfloat16,
            fp16=self.dtype == torch.float16,
            use_cpu=not torch.cuda.is_available(),
            gradient_checkpointing=bool(cfg.gradient_checkpointing),
            gradient_checkpointing_kwargs={"use_reentrant": False},
            logging_steps=cfg.logging_steps,
            save_strategy="steps",
            save_steps=cfg.save_steps,
            save_total_limit=cfg.save_total_limit,
            eval_strategy="steps" if has_validation and cfg.eval_steps > 0 else "no",
            eval_steps=cfg.eval_steps or None,
            report_to=[],
            completion_only_loss=True,
            # Padding-free packing: a batch is one row of records with per-record position ids; the
            # attention mask built from them is block-diagonal, so records never attend to each other.
            padding_free=self.packing,
            train_sampling_strategy="random" if self.packing else "group_by_length",
            max_length=None,  # records are truncated to data.max_length in build_examples
            dataloader_pin_memory=torch.cuda.is_available(),
            # DDP: every LoRA weight takes part in every step, so DDP need not search the graph for unused ones
            # (that search also breaks with gradient checkpointing).
            ddp_find_unused_parameters=False,
            ddp_timeout=int(self.launch.timeout.total_seconds()),
        )

    def _setup_trainer(self) -> None:
        score_label_positions_only()
        lora = self.cfg.lora
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        self.trainer = AtomicCheckpointSFTTrainer(
            model=self.model,
            args=self._training_arguments(),
            train_dataset=self.datasets["train"],
            eval_dataset=self.datasets.get("validation"),
            processing_class=self.tokenizer,
            peft_config=peft_config,
        )
        if isinstance(self.cfg.gradient_checkpointing, float):
            self.trainer.add_callback(PartialCheckpointing(self.cfg.gradient_checkpointing))

    def train(self) -> Path:
        """Train (resuming if asked and possible), evaluate, then publish the output directory."""
        resume_from = latest_checkpoint(self.checkpoint_dir) if self.cfg.resume else None
        if self.cfg.resume and self.launch.is_main:
            print(f"resuming from {resume_from}" if resume_from else "no checkpoint to resume from; starting")  # noqa: T201
        # peft casts each LoRA input to the adapter's fp32 dtype, then autocast casts it back to 16-bit for the
        # matmul: two copies per adapted Linear, one kept for backward (bench, CPU: peak RSS 4,546 -> 4,022 MiB).
        # Without the cast the LoRA matmul gets the same 16-bit input, shared with the base layer (tested).
        with disable_input_dtype_casting(self.trainer.model, active=self.dtype != torch.float32):
            self.trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            if "validation" in self.datasets:
                self.trainer.evaluate()
        on_main_rank(self.launch, self._publish)
        return self.out_dir

    def _publish(self) -> None:
        """Write the final directory beside the checkpoints, then move it into place in one rename."""
        final = self.work_dir / "final"
        shutil.rmtree(final, ignore_errors=True)
        self.save_checkpoint(final)
        publish_directory(final, self.out_dir)
        if not self.cfg.keep_checkpoints:
            shutil.rmtree(self.work_dir)

    def save_checkpoint(self, directory: Path) -> None:
        """Write the servable adapter directory: adapter, tokenizer + chat template, manifest, logs, curve."""
        directory.mkdir(parents=True, exist_ok=True)
        self.trainer.model.save_pretrained(directory)
        self.tokenizer.chat_template = adapter_chat_template(self.cfg.data.template, self.tokenizer)
        self.tokenizer.save_pretrained(directory)
        history = self.trainer.state.log_history
        (directory / "train_log.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
        write_loss_curve(history, directory / "loss_curve.png")
        manifest = build_manifest(self.cfg, history, self.skipped_records, self.datasets, self.records_per_file)
        manifest["licence"] = self.licence
        manifest["distributed"] = self.launch.describe(self.trainer.args.train_batch_size, self.cfg.optim.grad_accum)
        write_manifest(directory, manifest)


class TrainingArguments(TrlSFTConfig):
    """TRL's SFTConfig whose device on CPU is plain `cpu`.

    With several CPU ranks accelerate names each rank's device `cpu:<local rank>`, and the Trainer resumes the
    optimizer with `torch.load(map_location=args.device)`, which torch 2.13 refuses for an indexed CPU ("don't
    know how to restore data location ... cpu:0"): a two-rank run could not resume. There is one CPU device."""

    @property
    def device(self) -> torch.device:
        device = super().device
        return torch.device("cpu") if device.type == "cpu" else device


class PartialCheckpointing(TrainerCallback):
    """Recompute only the first `fraction` of the decoder layers in backward.

    The Trainer turns checkpointing on for every layer when training starts; this runs right after and turns it
    off again for the remaining layers. Each layer's activations cost the same, so memory and recompute time
    both scale with the fraction: a dial between "fits" and "fast" rather than a switch."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        keep = math.ceil(self.fraction * len(layers))
        for layer in layers[keep:]:
            layer.gradient_checkpointing = False


def varlen_attention_available() -> bool:
    """Whether flash-attention 2 (variable-length rows, no cross-record work) can run here."""
    from transformers.utils import is_flash_attn_2_available

    return torch.cuda.is_available() and is_flash_attn_2_available()


def run_sft(cfg: SFTConfig, launch: Launch | None = None) -> Path:
    """One run, as a single process or as one rank of torchrun's (`launch`, read from its environment)."""
    launch = launch or Launch.from_environment()
    with process_group(launch):
        return SFTRecipe(cfg, launch).setup().train()
