"""The losslessness explainer's float64 re-run: exact, on the CPU, without a float64 copy of the whole model."""
import copy

import pytest
import torch

from labkit.check import fp64_next_logits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_fp64_next_logits_equals_a_float64_copy(tiny, arch):
    lm = tiny(arch)
    ids = [3 + i % 20 for i in range(37)]
    got = fp64_next_logits(lm.model, ids)
    want = copy.deepcopy(lm.model).to(torch.float64)(input_ids=torch.tensor([ids])).logits[0, -1]
    assert got.dtype == torch.float64 and got.device.type == "cpu"
    assert torch.equal(got, want)
    assert next(lm.model.parameters()).dtype == torch.float32  # the model itself is untouched
