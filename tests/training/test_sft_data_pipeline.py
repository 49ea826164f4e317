"""What the trainer actually receives: loss on response tokens only, and packed records that cannot see each other."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from training.checkpoints import EpochSeededLengthGroupedSampler
from training.data.examples import render
from training.sft import SFTRecipe

from .conftest import SAMPLE, tiny_config


def first_batch(recipe: SFTRecipe) -> dict:
    return next(iter(recipe.trainer.get_train_dataloader()))


def test_loss_is_on_response_tokens_only(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, SAMPLE, tmp_path / "out", **{"optim.batch_size": 4, "data.packing": False})
    recipe = SFTRecipe(cfg).setup()
    batch = first_batch(recipe)
    tokenizer = recipe.tokenizer
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        ids, labels = ids[mask.bool()].tolist(), labels[mask.bool()].tolist()
        trained = [i for i, label in zip(ids, labels, strict=True) if label != -100]
        text = tokenizer.decode(ids)
        response_start = text.index("### 応答:\n") + len("### 応答:\n")
        assert tokenizer.decode(trained) == text[response_start:]
        assert tokenizer.decode(trained).endswith(tokenizer.eos_token)
        assert "### 指示" not in tokenizer.decode(trained)


def test_packed_batch_has_per_record_positions_and_masked_prompts(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, SAMPLE, tmp_path / "out", **{"optim.batch_size": 4, "data.packing": True})
    batch = first_batch(SFTRecipe(cfg).setup())
    assert batch["input_ids"].shape[0] == 1  # padding-free: the batch is one row, no pad tokens
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == 4 and starts[0] == 0
    labels = batch["labels"][0]
    for start in starts:
        assert labels[start] == -100  # every record begins with prompt tokens


def test_without_varlen_attention_batches_are_padded_and_grouped_by_length(tiny_model, tmp_path):
    """On CPU (no flash-attention) "auto" packing means padded batches of similar-length records: per-record
    attention, and far less padding than batches drawn at random."""
    cfg = tiny_config(tiny_model, SAMPLE, tmp_path / "out", **{"optim.batch_size": 8})
    recipe = SFTRecipe(cfg).setup()
    assert cfg.data.packing == "auto" and not recipe.packing
    batches = list(recipe.trainer.get_train_dataloader())
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["attention_mask"].numel() for b in batches)
    assert all(b["input_ids"].shape[0] == 8 for b in batches[:-1])
    assert real / padded > 0.95  # random batches of the sample: ~0.82
    assert sum(b["input_ids"].shape[0] for b in batches) == len(recipe.datasets["train"])


def test_packed_records_do_not_attend_to_each_other(tiny_model):
    """Logits of two records packed in one row equal their logits computed separately.

    `use_cache=False` as TRL's compute_loss passes it: transformers derives the block-diagonal mask from
    position ids only without a KV cache (with one, packed rows would attend across records)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    a = torch.tensor([[5, 17, 42, 99, 7, 8]])
    b = torch.tensor([[300, 301, 302, 303]])
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])]).unsqueeze(0)
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits
        alone_a, alone_b = model(input_ids=a).logits, model(input_ids=b).logits
    torch.testing.assert_close(together[:, : a.shape[1]], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together[:, a.shape[1] :], alone_b, atol=1e-5, rtol=1e-4)
    shifted = model(input_ids=packed, use_cache=False).logits[:, a.shape[1] :]  # without position ids b would see a
    assert not torch.allclose(shifted, alone_b, atol=1e-3)


def test_rendered_prompt_matches_record(tiny_model):
    from transformers import AutoTokenizer

    from training.data.records import load_records

    record = load_records([SAMPLE]).records[0]
    example = render(record, "alpaca-ja", AutoTokenizer.from_pretrained(tiny_model))
    assert record.instruction in example.prompt and example.response.startswith(record.output)


def test_length_grouped_order_depends_only_on_seed_and_epoch():
    """What makes kill -9 + --resume exact with length-grouped batches (the stock sampler uses global RNG)."""
    lengths = [(i * 37) % 101 + 5 for i in range(64)]
    sampler = EpochSeededLengthGroupedSampler(4, lengths, seed=3)
    torch.manual_seed(123)
    first = list(sampler)
    torch.manual_seed(456)
    assert list(EpochSeededLengthGroupedSampler(4, lengths, seed=3)) == first
    assert sorted(first) == list(range(64))
    sampler.set_epoch(1)
    assert list(sampler) != first
