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


def test_fp64_next_logits_with_a_tied_head():
    from transformers import AutoModelForCausalLM

    from labkit.testing import tiny_config

    cfg = tiny_config("llama")
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = [3 + i % 20 for i in range(37)]
    want = copy.deepcopy(model).to(torch.float64)(input_ids=torch.tensor([ids])).logits[0, -1]
    assert torch.equal(fp64_next_logits(model, ids), want)
