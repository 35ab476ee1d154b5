"""The execution paths (labkit.backends): a reversible transformation of the loaded model that changes how
its linears compute, never what generate returns. (The registry-wide greedy tests run on every path:
test_equivalence.py.)"""
import copy

import pytest
import torch

from labkit import backends
from labkit.check import greedy_reference
from labkit.testing import tiny_lm

pytestmark = pytest.mark.skipif(backends.fast_available("cpu", torch.float32) is not None,
                                reason="this torch build has no oneDNN linear kernels")


def test_fast_path_is_reversible_and_keeps_generate_output():
    lm = tiny_lm("llama")
    ids = [3, 5, 7, 9, 11, 3, 5]
    ref = greedy_reference(lm, ids, 24)
    assert backends.current(lm.model) == "stock"
    assert backends.apply(lm.model, "fast") == "fast" and lm.backend == "fast"
    linears = [m for m in lm.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, backends.PackedLinear) for m in linears)
    assert greedy_reference(lm, ids, 24) == ref
    with backends.use(lm.model, "stock"):
        assert lm.backend == "stock" and greedy_reference(lm, ids, 24) == ref
    assert lm.backend == "fast"
    # the state dict is the stock model's: same keys, same tensors
    assert set(lm.model.state_dict()) == set(tiny_lm("llama").model.state_dict())


def test_packed_linear_is_row_consistent_and_close_to_stock():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 200, bias=True)
    x = torch.randn(1, 16, 96)
    with torch.no_grad():
        want = lin(x)
        lin.__class__ = backends.PackedLinear
        lin.repack()
        got = lin(x)
        # a row's result does not depend on how many rows the pass has (a tree verify = one-token steps)
        for m in (1, 2, 5, 16):
            assert torch.equal(lin(x[:, :m]), got[:, :m])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_deep_copy_and_other_dtypes_fall_back_or_repack():
    lm = tiny_lm("qwen2", backend="fast")
    ids = [4, 8, 15, 16, 23, 42 % 32]
    ref = greedy_reference(lm, ids, 16)
    twin = copy.deepcopy(lm.model)  # the opaque packed weight is not copied: packed again on first use
    out = twin.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    assert out == ref
    m64 = copy.deepcopy(lm.model).to(torch.float64)  # the losslessness explainer's float64 re-run
    with torch.no_grad():
        assert m64(torch.tensor([ids])).logits.dtype == torch.float64


def test_resolve():
    assert backends.resolve("auto", "cpu", torch.float32) == "fast"
    assert backends.resolve(None, "cpu", torch.float64) == "stock"
    assert backends.resolve("stock", "cpu", torch.float32) == "stock"
    with pytest.raises(backends.BackendError, match="unknown backend"):
        backends.resolve("turbo", "cpu", torch.float32)
    with pytest.raises(backends.BackendError, match="cannot run here"):
        backends.resolve("fast", "cpu", torch.float16)


def test_truncated_draft_runs_on_the_targets_path():
    from labkit.drafter import truncated_copy

    lm = tiny_lm("llama", backend="fast")
    assert truncated_copy(lm, 1).backend == "fast"
    with backends.use(lm.model, "stock"):
        assert truncated_copy(lm, 1).backend == "stock"


def test_fast_attention_matches_sdpa_with_a_tree_mask():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from labkit import tree

    class Module(torch.nn.Module):
        num_key_value_groups = 3
        is_causal = True

    torch.manual_seed(0)
    parents = [-1, -1, 0, 0, 2, 1, 5]
    q = torch.randn(1, 6, len(parents) + 1, 16)
    k, v = torch.randn(2, 1, 2, 40 + len(parents) + 1, 16)
    mask = tree.attention_mask(parents, 40)
    want, _ = sdpa_attention_forward(Module(), q, k, v, mask, scaling=0.25)
    got, _ = backends.fast_sdpa(Module(), q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # one token, no mask: transformers' own path
    want, _ = sdpa_attention_forward(Module(), q[:, :, :1], k, v, None, scaling=0.25)
    got, _ = backends.fast_sdpa(Module(), q[:, :, :1], k, v, None, scaling=0.25)
    assert torch.equal(got, want)


def test_fast_path_switches_the_attention_implementation_and_back():
    lm = tiny_lm("llama", backend="fast")
    assert lm.model.config._attn_implementation == backends.FAST_ATTENTION
    with backends.use(lm.model, "stock"):
        assert lm.model.config._attn_implementation == "sdpa"
    assert lm.model.config._attn_implementation == backends.FAST_ATTENTION


def test_growing_cache_behaves_like_dynamic_cache():
    from transformers import DynamicCache

    from labkit.kvcache import MIN_CAPACITY, GrowingCache

    torch.manual_seed(0)
    grow, dyn = GrowingCache(), DynamicCache()
    for step, m in enumerate([5, 1, 3, MIN_CAPACITY, 2]):  # the 4th update outgrows the first buffer
        k, v = torch.randn(2, 1, 2, m, 8)
        kg, vg = grow.update(k, v, 0)
        kd, vd = dyn.update(k, v, 0)
        assert torch.equal(kg, kd) and torch.equal(vg, vd)
        if step == 2:
            grow.crop(-2)
            dyn.crop(-2)
            # the engine's compaction writes in place into the cache's view
            for c in (grow, dyn):
                c.layers[0].keys[..., 3:4, :] = c.layers[0].keys.index_select(-2, torch.tensor([5]))
    assert grow.get_seq_length() == dyn.get_seq_length() == 5 + 1 + 3 - 2 + MIN_CAPACITY + 2
    assert torch.equal(grow.layers[0].keys, dyn.layers[0].keys)
    layer = grow.layers[0]
    assert layer.keys.data_ptr() == layer._kbuf.data_ptr() and layer._kbuf.shape[-2] > layer.keys.shape[-2]


def test_engine_uses_the_growing_cache_on_the_fast_path_only():
    from transformers import DynamicCache

    from labkit import engine
    from labkit.kvcache import GrowingCache

    assert isinstance(engine.Target(tiny_lm("llama", backend="fast")).cache, GrowingCache)
    stock = engine.Target(tiny_lm("llama")).cache
    assert isinstance(stock, DynamicCache) and not isinstance(stock, GrowingCache)
