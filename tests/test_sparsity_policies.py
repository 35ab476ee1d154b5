"""Each sparsity policy's selection rule on hand-made attention scores (known answers), and the mask algebra
of the capture (a policy narrows the incoming causal / tree mask, never replaces it)."""
import math
from types import SimpleNamespace

import pytest
import torch

from labkit.tree import ancestor_mask, attention_mask
from labkit.params import ParamError
from labkit.sparsity import LayerCall, Selection, policies
from labkit.sparsity.instrument import _apply
from labkit.sparsity.policies import h2o, razor, streaming, tidal, token_select

NEG = float("-inf")


def probs_to_logits(p):
    return torch.as_tensor(p, dtype=torch.float32).log()  # log(0) = -inf: masked


def fake_lm(layers):
    return SimpleNamespace(config=SimpleNamespace(num_hidden_layers=layers))


# ---- StreamingLLM ---------------------------------------------------------------------------------

def test_streaming_keeps_sinks_and_window():
    assert streaming.streaming_keep(10, 2, 3).tolist() == [1, 1, 0, 0, 0, 0, 0, 1, 1, 1]
    assert streaming.streaming_keep(4, 2, 3).all()  # overlap: everything
    pol = policies.create("streaming_llm", {"budget": 5, "sinks": 2})
    call = LayerCall.from_logits(torch.zeros(2, 1, 11), past=10)
    keep = pol.select(call)
    assert keep.shape == (1, 1, 10) and keep[0, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 1, 1, 1]
    assert pol.select(LayerCall.from_logits(torch.zeros(2, 1, 6), past=5)) is None  # budget covers the context


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(ParamError, match="sinks"):
        policies.create("streaming_llm", {"budget": 4, "sinks": 4})
    with pytest.raises(ParamError, match="unknown sparsity policy"):
        policies.get("nope")
    with pytest.raises(ParamError, match="out of range"):
        policies.create("h2o", {"forget": 1.5})


# ---- H2O / A2SF -----------------------------------------------------------------------------------

PREFILL = [[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0.2, 0.1, 0.7, 0], [0.1, 0.5, 0.2, 0.2]]


def prefill_call():
    p = torch.tensor(PREFILL)
    return LayerCall.from_logits(p.log()[None].expand(2, 4, 4), past=0, n_kv_heads=1)  # 2 query heads, 1 KV head


def test_accumulate_with_forgetting():
    attn = torch.tensor([[[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7]]])
    s = h2o.accumulate(torch.tensor([[1.0, 2.0, 3.0]]), attn, 0.5)
    assert torch.allclose(s, torch.tensor([[0.6, 0.75, 0.95, 0.7]]))


def test_evict_lowest_outside_recent_window():
    scores = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 0.0]])
    kept = h2o.evict(scores, torch.ones(1, 7, dtype=torch.bool), budget=4, recent=2)
    assert kept[0].tolist() == [1, 0, 1, 0, 0, 1, 1]


@pytest.mark.parametrize("name,expected", [("h2o", [1, 0, 0, 1]),  # plain sums: col 0 (2.2) is the heavy hitter
                                           ("a2sf", [0, 1, 0, 1])])  # forget 0.5: col 1 (0.575) wins
def test_h2o_and_a2sf_select_heavy_hitters(name, expected):
    pol = policies.create(name, {"budget": 2, "recent_ratio": 0.5, **({"forget": 0.5} if name == "a2sf" else {})})
    pol.reset()
    call = prefill_call()
    pol.observe(call, None)
    want = [2.2, 0.7, 0.9, 0.2] if name == "h2o" else [0.55, 0.575, 0.55, 0.2]
    assert torch.allclose(pol.scores[0], 2 * torch.tensor([want]), atol=1e-5)  # 2 heads summed per KV head
    keep = pol.select(LayerCall.from_logits(torch.zeros(2, 1, 5), past=4, n_kv_heads=1))
    assert keep.shape == (1, 1, 4) and keep[0, 0].int().tolist() == expected
    assert pol.step_state() == {"evicted": 2}


def test_h2o_commit_maps_tree_rows_to_new_slots():
    pol = policies.create("h2o", {"budget": 100})
    pol.scores[0] = torch.tensor([[1.0, 1.0]])
    pol.kept[0] = torch.ones(1, 2, dtype=torch.bool)
    # a verify pass of root + 2 sibling nodes after 2 committed entries: columns 2 (root), 3, 4 (siblings)
    rows = torch.tensor([[0.5, 0.3, 0.2, 0.0, 0.0], [0.1, 0.1, 0.4, 0.4, 0.0], [0.2, 0.2, 0.3, 0.0, 0.3]])
    pol.pending[0] = rows[None]
    pol.commit([0, 2], past=4)  # the root and the second sibling were committed
    # slot 2 = root (column 2), slot 3 = node 1 (column 4); forget = 1: plain sums of rows 0 and 2
    assert torch.allclose(pol.scores[0], torch.tensor([[1.7, 1.5, 0.5, 0.3]]))
    assert pol.kept[0].all() and pol.kept[0].shape == (1, 4)


# ---- TidalDecode ----------------------------------------------------------------------------------

def test_tidal_top_positions_sum_over_heads():
    p = torch.tensor([[[0.1, 0.5, 0.1, 0.3]], [[0.4, 0.0, 0.1, 0.5]]])  # [H=2, q=1, past=4]; sums .5 .5 .2 .8
    assert tidal.top_positions(p, 2)[0, 0].tolist() in ([1, 0, 0, 1], [0, 1, 0, 1])
    p2 = torch.tensor([[[0.1, 0.6, 0.0, 0.3]], [[0.4, 0.0, 0.1, 0.5]]])  # sums .5 .6 .1 .8
    assert tidal.top_positions(p2, 2)[0, 0].tolist() == [0, 1, 0, 1]


def test_tidal_selection_layers_reuse_their_choice():
    assert tidal.selection_layers("auto", 32) == [2, 13] and tidal.selection_layers("auto", 30) == [2, 12]
    pol = policies.create("tidal_decode", {"budget": 2, "select_layers": "1,3"})
    pol.start(fake_lm(5))
    pol.reset()
    first = torch.tensor([[0.05, 0.6, 0.05, 0.25, 0.05]])  # past 4 + the token itself
    second = torch.tensor([[0.5, 0.05, 0.3, 0.1, 0.05]])

    def call(layer, p):
        return LayerCall.from_logits(probs_to_logits(p)[None].expand(2, 1, 5), past=4, layer=layer)

    assert pol.select(call(0, first)) is None  # before the first selection layer: dense
    assert pol.select(call(1, first)) is None  # a selection layer attends fully...
    assert pol.select(call(2, second))[0, 0].tolist() == [0, 1, 0, 1]  # ...and the next layers reuse its top-2
    assert pol.select(call(3, second)) is None  # re-selection
    assert pol.select(call(4, first))[0, 0].tolist() == [1, 0, 1, 0]


# ---- TokenSelect ----------------------------------------------------------------------------------

def test_soft_vote_and_keep():
    logits = torch.full((2, 1, 8), -5.0)
    logits[0, 0, 5] = 5.0  # head 0 votes for position 5
    logits[1, 0, 3] = 5.0  # head 1 for position 3
    logits[1, 0, 4] = 4.0  # and a little for 4
    votes = token_select.soft_vote(logits)[0]
    assert votes.argsort(descending=True)[:3].tolist() == [5, 3, 4]
    keep = token_select.vote_keep(votes[None], k=2, sinks=1, local=1)
    assert keep[0, 0].int().tolist() == [1, 0, 0, 1, 0, 1, 0, 1]


def test_token_select_selection_cache():
    pol = policies.create("token_select", {"budget": 4, "sinks": 1, "local": 1, "threshold": 0.9})
    pol.reset()
    key = torch.zeros(1, 9, 2)  # [Hkv=1, kv, D=2]
    key[0, 3] = torch.tensor([4.0, 0.0])
    key[0, 5] = torch.tensor([0.0, 4.0])
    key[0, 6] = torch.tensor([3.0, 0.0])

    def call(q):
        return LayerCall(0, torch.tensor(q, dtype=torch.float32).reshape(1, 1, 2), key, None, 1.0, past=8)

    keep = pol.select(call([1.0, 0.0]))  # votes for 3 then 6
    assert keep[0, 0].int().tolist() == [1, 0, 0, 1, 0, 0, 1, 1]
    assert pol.step_state() == {"cache_hits": 0, "cache_misses": 1}  # counted per forward (from layer 0)
    again = pol.select(call([0.99, 0.05]))  # the next forward, a similar query: the cached selection
    assert again[0, 0].int().tolist() == [1, 0, 0, 1, 0, 0, 1, 1]
    assert pol.step_state() == {"cache_hits": 1, "cache_misses": 0}
    other = pol.select(call([0.0, 1.0]))  # a different query re-selects
    assert other[0, 0, 5] and not other[0, 0, 3]
    assert pol.step_state() == {"cache_hits": 0, "cache_misses": 1}


# ---- RazorAttention -------------------------------------------------------------------------------

def test_retrieval_head_scores_and_pick():
    period, n = 4, 12
    attn = torch.zeros(3, n, n)
    for i in range(n):
        attn[0, i, i] = 1.0  # local head
        j = i - period + 1 if i >= period else i
        attn[1, i, j] = 1.0  # induction head
        attn[2, i, i - period if i >= period else i] = 1.0  # echo head
    induction, echo = razor.head_scores({0: attn}, period)
    assert induction[0].tolist() == [0.0, 1.0, 0.0] and echo[0].tolist() == [0.0, 0.0, 1.0]
    picked = razor.pick_retrieval(induction, echo, induction_frac=0.3, echo_frac=0.3)
    assert picked[0].tolist() == [False, True, True]


def test_razor_keep_and_compensation_token():
    keep = razor.razor_keep(8, 1, 2, torch.tensor([True, False]))
    assert keep[0, 0].all() and keep[1, 0].int().tolist() == [1, 0, 0, 0, 0, 0, 1, 1]
    pol = policies.create("razor_attention", {"budget": 3, "sinks": 1})
    pol.retrieval = torch.tensor([[True, False]])  # layer 0: KV head 0 retrieval
    key = torch.arange(2 * 9 * 1, dtype=torch.float32).reshape(2, 9, 1)
    call = LayerCall(0, torch.zeros(4, 1, 1), key, None, 1.0, past=8, value=key + 100)
    sel = pol.select(call)
    assert isinstance(sel, Selection)
    assert sel.keep[1, 0].int().tolist() == [1, 0, 0, 0, 0, 0, 1, 1]
    assert sel.extra_key[1, 0, 0] == key[1, 1:6].mean() and sel.extra_value[0, 0, 0] == key[0, 1:6].mean() + 100
    assert sel.extra_heads.tolist() == [False, False, True, True]  # GQA: query heads 2, 3 read KV head 1
    assert sel.extra_count == 1.0  # the public implementation's weight: one ordinary entry
    counted = policies.create("razor_attention", {"budget": 3, "sinks": 1, "compensation": "count"})
    counted.retrieval = pol.retrieval
    assert counted.select(call).extra_count == 5.0  # positions 1..5 dropped
    off = policies.create("razor_attention", {"budget": 3, "sinks": 1, "compensation": "off"})
    off.retrieval = pol.retrieval
    assert torch.equal(off.select(call), sel.keep)


def test_a_counted_compensation_entry_weighs_as_its_copies():
    """extra_count = n: the recorded weights equal those of n copies of the entry (score + log n)."""
    torch.manual_seed(3)
    h, d, past = 2, 4, 6
    query, key = torch.randn(h, 1, d), torch.randn(1, past + 1, d)
    ek = torch.randn(1, 1, d)
    keep = torch.ones(1, 1, past, dtype=torch.bool)
    call = LayerCall(0, query, key, None, 0.5, past, value=key)
    counted = call.probs(Selection(keep=keep, extra_key=ek, extra_value=ek, extra_heads=torch.ones(h, dtype=torch.bool),
                                   extra_count=3.0))
    copies = LayerCall(0, query, torch.cat([key[:, :past], ek, ek, ek, key[:, past:]], 1), None, 0.5, past + 3,
                       value=key).probs(None)
    assert torch.allclose(counted[..., :past], copies[..., :past], atol=1e-6)
    assert torch.allclose(counted[..., past:], copies[..., past + 3:], atol=1e-6)


# ---- the capture's mask algebra -------------------------------------------------------------------

def test_selection_narrows_a_tree_mask_never_widens_it():
    parents = [-1, -1, 0, 2]  # root -> {0, 1}; 0 -> 2 -> 3
    past = 6
    mask = attention_mask(parents, past)  # [1, 1, 5, 11] additive
    q, kv = len(parents) + 1, past + len(parents) + 1
    call = LayerCall(0, torch.randn(2, q, 4), torch.randn(1, kv, 4), mask, None, past, value=torch.randn(1, kv, 4))
    keep = streaming.streaming_keep(past, 1, 2)[None, None]  # committed positions 0, 4, 5
    _, _, allowed = _apply(call, Selection(keep=keep), torch.randn(1, 1, kv, 4), torch.randn(1, 1, kv, 4))
    tree = ancestor_mask(parents)
    for h in range(2):
        assert allowed[0, h, :, :past].int().tolist() == [[1, 0, 0, 0, 1, 1]] * q
        assert torch.equal(allowed[0, h, :, past:], tree)  # ancestors still seen, non-ancestors never
    p = call.probs(Selection(keep=keep))
    assert torch.allclose(p.sum(-1), torch.ones(2, q)) and (p[:, :, 1:4] == 0).all()
    assert (p[:, :, past:][~tree.expand(2, q, q)] == 0).all()


def test_recall_of_a_selection_on_known_scores():
    dense = torch.tensor([[[0.4, 0.1, 0.1, 0.2, 0.2]]])  # past 4 + self
    call = LayerCall.from_logits(dense.log(), past=4)
    sel = Selection(keep=torch.tensor([[[True, False, False, True]]]))
    kept = call.keep_full(sel)
    assert math.isclose(float((call.probs(None) * kept).sum()), 0.8, rel_tol=1e-6)  # 0.4 + 0.2 + self 0.2
    assert torch.allclose(call.probs(sel)[0, 0], torch.tensor([0.5, 0, 0, 0.25, 0.25]))


@pytest.mark.parametrize("count", [1.0, 6.0])  # an ordinary entry (boolean mask), a counted one (additive mask)
@pytest.mark.parametrize("q_len", [1, 3])  # SDPA packs GQA heads for one query, repeats keys for several
def test_masked_sdpa_attends_exactly_as_recorded(q_len, count):
    """The selection reaches SDPA as the recorded weights say: output == probs @ values (GQA, per-KV-head keep,
    a compensation entry read by some heads only)."""
    from types import SimpleNamespace

    from labkit.sparsity.instrument import _sdpa
    from labkit.sparsity.layer import expand_heads

    torch.manual_seed(0)
    h, hkv, d, past = 4, 2, 8, 10
    kv = past + q_len
    query, key, value = torch.randn(1, h, q_len, d), torch.randn(1, hkv, kv, d), torch.randn(1, hkv, kv, d)
    call = LayerCall(0, query[0], key[0], None, d ** -0.5, past, value=value[0])
    sel = Selection(keep=razor.razor_keep(past, 1, 3, torch.tensor([False, True])),
                    extra_key=key[0, :, 1:7].mean(-2, keepdim=True),
                    extra_value=value[0, :, 1:7].mean(-2, keepdim=True),
                    extra_heads=torch.tensor([True, True, False, False]), extra_count=count)
    k2, v2, m2 = _apply(call, sel, key, value)
    assert m2.dtype == (torch.bool if count == 1 else torch.float32)
    module = SimpleNamespace(num_key_value_groups=h // hkv, layer_idx=0, is_causal=True, training=False)
    out, _ = _sdpa(module, query, k2, v2, m2, scaling=d ** -0.5)
    p = call.probs(sel)  # [H, q, kv] over the real entries
    extra_w = 1 - p.sum(-1, keepdim=True)  # what the compensation entry took
    want = p @ expand_heads(value[0], h) + extra_w * expand_heads(sel.extra_value, h)
    assert torch.allclose(out[0].transpose(0, 1), want, atol=1e-5)
    assert (extra_w[2:] < 1e-7).all() and (extra_w[:2] > 1e-3).all()


@pytest.mark.parametrize("q_len,tree", [(1, False), (3, False), (3, True)])
def test_gathered_sdpa_matches_recorded_weights(q_len, tree):
    """Equal-size selections attend over the gathered kept entries only; same weights as the mask path."""
    from types import SimpleNamespace

    from labkit.sparsity.instrument import _gather, _sdpa
    from labkit.sparsity.layer import expand_heads

    torch.manual_seed(1)
    h, hkv, d, past = 4, 2, 8, 10
    kv = past + q_len
    query, key, value = torch.randn(1, h, q_len, d), torch.randn(1, hkv, kv, d), torch.randn(1, hkv, kv, d)
    mask = attention_mask([-1, -1], past) if tree else None  # root + two siblings
    call = LayerCall(0, query[0], key[0], mask, d ** -0.5, past, value=value[0])
    keep = torch.zeros(hkv, 1, past, dtype=torch.bool)
    keep[0, 0, [0, 3, 7, 9]] = True
    keep[1, 0, [1, 2, 8, 9]] = True  # per KV head, 4 each (H2O-like)
    sel = Selection(keep=keep)
    k2, v2, m2 = _gather(call, sel, key, value)
    assert k2.shape[2] == 4 + q_len
    module = SimpleNamespace(num_key_value_groups=h // hkv, layer_idx=0, is_causal=True, training=False)
    out, _ = _sdpa(module, query, k2, v2, m2, scaling=d ** -0.5)
    want = call.probs(sel) @ expand_heads(value[0], h)
    assert torch.allclose(out[0].transpose(0, 1), want, atol=1e-5)
    comp = Selection(keep=keep, extra_key=key[0, :, 4:6].mean(-2, keepdim=True),
                     extra_value=value[0, :, 4:6].mean(-2, keepdim=True),
                     extra_heads=torch.tensor([False, True, True, True]), extra_count=2.0)
    k2, v2, m2 = _gather(call, comp, key, value)
    out, _ = _sdpa(module, query, k2, v2, m2, scaling=d ** -0.5)
    p = call.probs(comp)
    want = p @ expand_heads(value[0], h) + (1 - p.sum(-1, keepdim=True)) * expand_heads(comp.extra_value, h)
    assert torch.allclose(out[0].transpose(0, 1), want, atol=1e-5)
    uneven = Selection(keep=keep.clone().index_put_((torch.tensor([0]), torch.tensor([0]), torch.tensor([5])),
                                                    torch.tensor(True)))
    assert _gather(call, uneven, key, value) is None  # unequal counts: the mask path
