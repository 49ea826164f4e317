"""Group size selection for W4A16 and the CPU pin_memory guard."""

from __future__ import annotations

import pytest
import torch

from training.errors import ModelError
from training.export.quantize import choose_group_size, cpu_safe_activation_pinning


def test_group_size_divides_every_layer():
    assert choose_group_size([576, 1536, 576]) == 64  # SmolLM2: hidden 576 = 9 × 64
    assert choose_group_size([4096, 14336]) == 128  # Llama-3-8B
    assert choose_group_size([128, 256]) == 128  # the tiny test model
    assert choose_group_size([96, 160]) == 32
    with pytest.raises(ModelError, match="no group size"):
        choose_group_size([100])


@pytest.mark.skipif(torch.accelerator.is_available(), reason="the guard only acts without an accelerator")
def test_pinning_is_skipped_only_inside_the_guard():
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory
    with cpu_safe_activation_pinning():
        assert IntermediatesCache.pin_memory is not original
        IntermediatesCache.pin_memory(object(), 0)  # no pinning, no error
    assert IntermediatesCache.pin_memory is original
