"""The sparsity capture on tiny random-init models: dense through the capture is token-identical to plain
decoding (chains and trees, sliding-window layers included), a budget covering the context is token-identical
to dense for every policy, small budgets really change what the model attends to, frames round-trip through
JSON lines, and the model is left untouched."""
import random

import pytest

from labkit import engine, methods, sparsity
from labkit.check import greedy_reference
from labkit.params import ParamError
from labkit.session import Session
from labkit.sparsity import LayerHeadSelection, Options, SparsityFrame, residency
from labkit.trace import Step, load_trace

METHODS = ["autoregressive", "prompt_lookup", "token_recycling", "draft_model"]  # token_recycling: trees
POLICIES = [n for n in sparsity.REGISTRY if n != "dense"]
N_NEW = 24


def prompt(seed=0, n=40, vocab=32):
    rng = random.Random(seed)
    head = [rng.randrange(1, vocab) for _ in range(12)]
    return (head * (n // 12 + 1))[:n - 3] + [rng.randrange(1, vocab) for _ in range(3)]


def tokens(events):
    return [t for e in events if isinstance(e, Step) for t in e.tokens]


def untouched(lm):
    m = lm.model
    assert m.config._attn_implementation == "sdpa"
    assert not m._forward_pre_hooks and not m._forward_hooks
    assert all(not mod._forward_pre_hooks for mod in m.modules())


def small_params(name, budget):
    extra = {"token_select": {"sinks": 1, "local": 2}, "streaming_llm": {"sinks": 1}, "razor_attention": {"sinks": 1}}
    return {"budget": budget, **extra.get(name, {})}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("name", METHODS)
def test_dense_capture_is_token_identical(tiny, arch, name):
    lm = tiny(arch, layers=4)
    ids = prompt(1)
    ref = greedy_reference(lm, ids, N_NEW)
    m = methods.create(name, lm)
    steps, frames = sparsity.run(lm, m, ids, "dense", max_new_tokens=N_NEW)
    assert tokens(steps) == ref
    assert [f.step for f in frames] == [s.index for s in steps]
    assert all(f.recall == pytest.approx(1.0) for f in frames)
    if name == "token_recycling":
        assert any(len(f.queries) > 1 for f in frames)  # verify passes recorded their accepted rows
    for f in frames[1:]:
        for lf in f.layers:
            for hf in lf.heads:
                assert hf.n_kept == f.kv_len and hf.kept == ((0, f.kv_len),)
                for q, row in zip(f.queries, hf.rows):
                    assert len(row.full) == q + 1 and row.mass == pytest.approx(1.0, abs=1e-5)
    untouched(lm)
    assert tokens(engine.decode(lm, methods.create(name, lm), ids, max_new_tokens=N_NEW)) == ref


@pytest.mark.parametrize("name", POLICIES)
def test_budget_covering_the_context_is_dense(tiny, name):
    lm = tiny("llama", layers=4)
    ids = prompt(2)
    ref = greedy_reference(lm, ids, N_NEW)
    for method in ("autoregressive", "token_recycling"):
        steps, frames = sparsity.run(lm, methods.create(method, lm), ids, Options(name, {"budget": 4096}),
                                     max_new_tokens=N_NEW)
        assert tokens(steps) == ref, f"{name} under {method}"
        dec = [f for f in frames if f.kind == "decode"]
        assert all(f.kl == pytest.approx(0.0, abs=1e-9) and f.top1 == 1.0 for f in dec)
        assert all(f.kv_kept_total == f.kv_dense_total for f in dec)


@pytest.mark.parametrize("name", POLICIES)
def test_small_budget_changes_what_the_model_attends_to(tiny, name):
    lm = tiny("llama", layers=4)
    ids = prompt(3)
    steps, frames = sparsity.run(lm, methods.create("token_recycling", lm), ids,
                                 Options(name, small_params(name, 8)), max_new_tokens=N_NEW)
    dec = [f for f in frames if f.kind == "decode"]
    assert min(f.recall for f in dec) < 0.99
    assert max(f.kl for f in dec) > 1e-4  # the logits moved: a real selection, not a picture
    assert all(f.kv_ratio < 1 for f in dec)
    for f in dec:  # what a head read never exceeds the budget where the policy bounds it
        if name != "tidal_decode":  # TidalDecode's dense and selection layers read everything
            assert max(hf.n_kept for lf in f.layers for hf in lf.heads) <= f.kv_len
        for lf in f.layers:
            for hf in lf.heads:
                for row in hf.rows:
                    assert row.mass <= 1 + 1e-5
    untouched(lm)


def test_policies_run_on_sliding_window_trees(tiny):
    lm = tiny("gemma3", layers=4)
    ids = prompt(4)
    for name in POLICIES:
        steps, frames = sparsity.run(lm, methods.create("token_recycling", lm), ids,
                                     Options(name, small_params(name, 6)), max_new_tokens=12)
        assert len(tokens(steps)) == 12 and len(frames) == len(steps)
    untouched(lm)


def test_streaming_residency_and_kv_accounting(tiny):
    lm = tiny("llama", layers=2)
    ids = prompt(5, n=30)
    _, frames = sparsity.run(lm, methods.create("autoregressive", lm), ids,
                             Options("streaming_llm", {"budget": 10, "sinks": 2}), max_new_tokens=8)
    dec = [f for f in frames if f.kind == "decode"]
    for f in dec:
        assert all(k == 10 for row in f.kv_kept for k in row)
        assert f.head(0, 0).kept == ((0, 2), (f.kv_len - 8, f.kv_len))
    res = residency(frames, layer=1, head=3)
    assert res.steps == tuple(f.step for f in frames) and res.width == dec[-1].kv_len
    last = res.cells[-1]
    assert last[:2] == (1.0, 1.0) and set(last[2:-8]) == {0.0} and set(last[-8:]) == {1.0}
    assert res.cells[1][-1] == -1.0  # the last position was not in the cache yet at the first decode step


def test_session_stream_yields_frames_after_steps_and_round_trips(tiny, tmp_path):
    lm = tiny("llama", layers=2)
    lab = Session(lm=lm)
    path = tmp_path / "sparse.jsonl"
    opts = Options("h2o", {"budget": 8}, record=LayerHeadSelection(layers=(1,), heads=(0, 2), full_row_max=16, top_k=4))
    events = list(lab.stream("prompt_lookup", prompt(6), max_new_tokens=16, trace=str(path), sparsity=opts))
    kinds = [type(e) for e in events]
    assert kinds == [Step, SparsityFrame] * (len(events) // 2)
    assert all(f.step == s.index for s, f in zip(events[::2], events[1::2]))
    tr = load_trace(path)
    assert tr.events == events and tr.config["sparsity"].startswith("h2o(budget=8")
    f = events[-1]
    assert [lf.layer for lf in f.layers] == [1] and [hf.head for hf in f.layers[0].heads] == [0, 2]
    row = f.layers[0].heads[0].rows[-1]
    assert not row.full and len(row.top) <= 4 and list(row.top) == sorted(row.top)  # long row: top-k + mass
    assert 0 < row.mass <= 1 + 1e-6
    untouched(lm)


def test_bad_policy_fails_before_anything_runs(tiny):
    lab = Session(lm=tiny("llama", layers=2))
    with pytest.raises(ParamError, match="unknown sparsity policy"):
        lab.stream("autoregressive", prompt(0), sparsity="nope")
    with pytest.raises(ParamError, match="budget"):
        lab.stream("autoregressive", prompt(0), sparsity=Options("h2o", {"budget": 0}))


def test_model_restored_when_decoding_fails(tiny):
    lm = tiny("llama", layers=2)
    with pytest.raises(RuntimeError, match="boom"):
        with sparsity.capture(lm, sparsity.create("streaming_llm", {"budget": 4, "sinks": 1})):
            assert lm.model.config._attn_implementation == "labkit_sparsity"
            raise RuntimeError("boom")
    untouched(lm)
