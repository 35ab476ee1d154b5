"""Method-specific tests of the training-free draft sources: ADED, Lookahead (+ SJD), copy drafts, SWIFT,
early exit, and the shared layer runner they stand on. (Greedy equivalence, sampling and SmolLM2 integration
come from the registry-parametrized tests.)"""
import json
import random

import numpy as np
import pytest
import torch

from labkit import engine
from labkit.sampling import GREEDY, SamplingConfig
from labkit.engine import Target, Verified
from labkit.layers import LayerStack, scratch
from labkit.methods.aded import Aded, AdedParams, TrigramMatrix
from labkit.methods.copy_spec import CopySpec, SpanIndex
from labkit.methods.early_exit import EarlyExit, candidate_exits, expected_tokens
from labkit.accept import rejection_per_node
from labkit.teaching import chi_square
from labkit.methods.lookahead import Lookahead, LookaheadParams
from labkit.methods.swift import Swift, SwiftParams, initial_skip

ZOO = [Aded, Lookahead, CopySpec, Swift, EarlyExit]


def snapshot(cache):
    return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


def same_cache(cache, snap):
    return len(cache.layers) == len(snap) and all(
        torch.equal(layer.keys, k) and torch.equal(layer.values, v) for layer, (k, v) in zip(cache.layers, snap))


# ---- the layer runner ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_layer_stack_all_layers_equals_the_model(tiny, arch):
    """All layers through the cache reproduce the model's logits (gemma3: the prompt crosses its 12-token
    window); re-running cached tokens (teacher forcing) does too; `scratch` restores every layer."""
    lm = tiny(arch, layers=3)
    ids = list(range(1, 21))
    t = Target(lm)
    t.prefill(ids[:-1])
    stack = LayerStack(lm)
    snap = snapshot(t.cache)
    with torch.inference_mode():
        ref = lm.model(torch.tensor([ids + [7, 9]])).logits[0]
    with scratch(t.cache):
        new = stack.logits(stack.run(t.cache, [ids[-1], 7, 9], t.kv_len, range(3)))[0]
        assert t.cache.layers[0].keys.shape[-2] == t.kv_len + 3
    assert same_cache(t.cache, snap)
    with scratch(t.cache):
        replay = stack.logits(stack.run(t.cache, ids[10:19], 10, range(3)))[0]
    assert same_cache(t.cache, snap)
    assert torch.allclose(new, ref[-3:], atol=1e-4) and torch.allclose(replay, ref[10:19], atol=1e-4)


def test_scratch_crops_only_the_layers_that_grew(tiny):
    lm = tiny("llama", layers=3)
    t = Target(lm)
    t.prefill([3, 4, 5, 6])
    stack = LayerStack(lm)
    snap = snapshot(t.cache)
    with scratch(t.cache):
        stack.run(t.cache, [7, 8], t.kv_len, [0, 2])  # layer 1 skipped
        assert [layer.keys.shape[-2] for layer in t.cache.layers] == [6, 4, 6]
    assert same_cache(t.cache, snap)


# ---- ADED ------------------------------------------------------------------------------------------

def test_trigram_matrix_updates_decays_and_falls_back():
    m = TrigramMatrix(decay=0.5, row_size=3)
    seq = [1, 2, 3, 1, 2, 4, 1, 2, 3]
    for a, b, c in zip(seq, seq[1:], seq[2:]):
        m.update((a, b), {c: 1.0})
    kind, row = m.row((1, 2))
    # (1,2)->3, then decayed by 0.5 and (1,2)->4 added, then decayed and (1,2)->3 added: 3: 0.25+1, 4: 0.5
    assert kind == "tri" and [c for c, _ in row] == [3, 4]
    assert row[0][1] == pytest.approx(1.25 / 1.75) and row[1][1] == pytest.approx(0.5 / 1.75)
    kind, row = m.row((9, 2))  # unknown pair: the bigram row of 2
    assert kind == "bi" and {c for c, _ in row} == {3, 4}
    assert m.row((9, 9)) == ("none", [])
    m.update((5, 6), {10: 0.1, 11: 0.2, 12: 0.3, 13: 0.4})
    assert [c for c, _ in m.row((5, 6))[1]] == [13, 12, 11]  # pruned to row_size


def test_aded_tree_is_puct_and_learns(tiny):
    lm = tiny("llama")
    m = Aded(lm, AdedParams(nodes=6, depth=3, branch=3, seed_prompt=False))
    m.matrix.update((1, 2), {3: 0.6, 4: 0.3, 5: 0.1})
    m.matrix.update((2, 3), {6: 1.0})
    m.matrix.update((2, 4), {7: 1.0})
    prop = m.propose([1, 2], GREEDY, torch.Generator())
    kids = [i for i, par in enumerate(prop.parents) if par == -1]
    # exploitation first (3, then its child 6); once that subtree is full, exploration reaches 4 and 5
    assert prop.tokens == [3, 6, 4, 7, 5] and prop.parents == [-1, 0, -1, 2, -1]
    assert all(set(b) == {"p", "q", "u"} for b in prop.state["branches"])
    assert "1,2" in prop.state["rows"] and len(prop.tokens) == len(set(zip(prop.parents, prop.tokens)))
    # the target says 9 follows (1, 2) and the first draft (3) was wrong: the row adapts, 3's Q drops
    logits = torch.full((len(prop.tokens) + 1, 32), -10.0)
    logits[:, 9] = 10.0
    delta = m.observe(Verified([1, 2], prop, logits, [], 9))
    assert delta["tested"] == len(kids) and delta["accepted_transitions"] == 0
    assert m.matrix.row((1, 2))[1][0][0] == 9
    assert m.drafted[(1, 2, 3)] == 1 and m.accepted.get((1, 2, 3), 0) == 0
    json.dumps(prop.state)
    json.dumps(delta)


# ---- copy drafts -----------------------------------------------------------------------------------

def test_longest_match_prefers_the_longest_then_the_most_recent():
    idx = SpanIndex(1)
    idx.sync([1, 2, 3, 4, 9, 0, 3, 4, 8, 2, 3, 4])
    assert idx.longest_match(32, 256) == (3, 3)  # "2 3 4" at 1..3 beats the more recent "3 4" at 6..7
    idx = SpanIndex(2)
    idx.sync([5, 6, 7, 1, 6, 7, 2, 6, 7])
    assert idx.longest_match(32, 256) == (5, 2)  # tie at length 2: the most recent
    idx.sync([5, 6, 7, 1, 6, 7, 2, 6, 7, 3])  # incremental: "7 3" never occurred
    assert idx.longest_match(32, 256) == (-1, 0)
    idx.sync([4, 4])  # not an extension: re-indexed from scratch
    assert idx.tokens == [4, 4] and idx.longest_match(32, 256) == (-1, 0)


def test_copy_length_adapts(tiny):
    lm = tiny("llama")
    m = CopySpec(lm)
    m.start([], GREEDY)
    seq = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1, 2]
    prop = m.propose(seq, GREEDY, torch.Generator())
    assert prop.tokens == [3, 4, 5, 6, 7, 8] and prop.state["match_len"] == 2
    logits = torch.zeros(7, 32)
    m.observe(Verified(seq, prop, logits, list(range(6)), 9))
    assert m.length == 12
    m.observe(Verified(seq, prop, logits, [0, 1], 9))
    assert m.length == 3


# ---- lookahead -------------------------------------------------------------------------------------

def test_lookahead_tree_pool_and_window(tiny):
    lm = tiny("llama")
    m = Lookahead(lm, LookaheadParams(window=3, ngram=3, guesses=2))
    prompt = [5, 6, 7, 5, 6, 8, 1]
    m.start(prompt, GREEDY)
    assert m.pool[5] == [(6, 8), (6, 7)] and m.pool[6] == [(8, 1), (7, 5)]  # most recent first
    prop = m.propose(prompt + [5], GREEDY, torch.Generator())
    # verification trie (6 -> 8, 6 -> 7 share the 6), then the trunk chain, then one diagonal node per column
    assert prop.tokens[:3] == [6, 8, 7] and prop.parents[:3] == [-1, 0, 0]
    trunk = [3, 4, 5]
    assert prop.parents[3:6] == [-1, 3, 4] and prop.parents[6:] == trunk
    assert [prop.tokens[i] for i in trunk] == m.tok[0] and prop.tokens[6:] == m.tok[1]
    # the target agrees with the first pool n-gram: 6, 8 accepted; new Jacobi tokens are 20 + column
    logits = torch.zeros(len(prop.tokens) + 1, 32)
    logits[0, 6] = logits[1, 8] = logits[2, 9] = 5.0
    for j, node in enumerate(prop.parents[6:]):
        logits[6 + j + 1, 20 + j] = 5.0
    old = [list(level) for level in m.tok]
    delta = m.observe(Verified(prompt + [5], prop, logits, [0, 1], 9))
    assert delta["won"] == "pool[0]" and delta["shift"] == 2
    for j in range(3):
        assert (old[1][j], 20 + j) in m.pool[old[0][j]]  # harvested n-grams: level 0, level 1, new token
    # cells keep their absolute positions: 2 extra tokens committed -> shifted left by 2 (last cell repeated)
    assert m.tok[0] == [old[1][2]] * 3 and m.tok[1] == [22, 22, 22]
    json.dumps(prop.state) and json.dumps(delta)


def test_per_node_rejection_preserves_the_target_distribution():
    """Siblings drawn from different distributions (a q-sampled token, then a point mass): the SJD rule with
    each node's own q gives exactly p. The engine's shared-q rule (q of the first sibling for all) does not:
    the same test catches it (it accepts the point mass 3 whenever the sampled token is rejected)."""
    from labkit.accept import rejection_tree

    p = torch.full((3, 4), 0.25)  # root + two nodes; every row uniform
    q_sampled = torch.tensor([0.7, 0.1, 0.1, 0.1])
    q = torch.stack([q_sampled, torch.eye(4)[3]])
    gen = torch.Generator().manual_seed(0)
    right, wrong = np.zeros(4), np.zeros(4)
    for _ in range(3000):
        x = int(torch.multinomial(q_sampled, 1, generator=gen))
        for rule, counts in ((rejection_per_node, right), (rejection_tree, wrong)):
            out = rule([-1, -1], [x, 3], p, q, gen)
            counts[[x, 3][out.path[0]] if out.path else out.bonus] += 1
    assert chi_square(right.tolist(), [0.25] * 4)[1] > 1e-3
    assert chi_square(wrong.tolist(), [0.25] * 4)[1] < 1e-6


# ---- SWIFT -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("granularity, units, k, first", [("layer", 6, 2, {2, 3}), ("sublayer", 12, 4, {4, 5, 6, 7})])
def test_swift_search_state_and_cache_left_intact(tiny, granularity, units, k, first):
    lm = tiny("llama", layers=6)
    m = Swift(lm, SwiftParams(skip_ratio=0.34, search_rounds=5, eval_tokens=8, granularity=granularity))
    assert m.n_units == units and m.skip == initial_skip(units, k) == frozenset(first)
    per_layer = units // 6
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
    target_seen = []

    class Spy(Swift):
        def propose(self, seq, sampling, generator):
            snap = snapshot(self.target.cache)
            prop = super().propose(seq, sampling, generator)
            target_seen.append(same_cache(self.target.cache, snap))
            if self.target.kv_len >= len(ids) + self.params.eval_tokens:
                # the full model, teacher-forced on its own greedy tokens, predicts them all: nothing skipped
                # scores a matchness of 1
                target_seen.append(self.matchness(seq, frozenset()) == 1.0)
            return prop

    spy = Spy(lm, m.params)
    steps = list(engine.decode(lm, spy, ids, max_new_tokens=24))
    assert all(target_seen) and len(target_seen) > 6
    searched = [s.state["search"] for s in steps if "search" in s.state]
    assert len(searched) == 5 and all(len(s["candidate"]) == k for s in searched)
    assert all(len(s.state["skip"]) == k and per_layer <= min(s.state["skip"]) and max(s.state["skip"]) < 5 * per_layer
               for s in steps[1:])  # never the first or the last layer
    assert [s.state["phase"] for s in steps[1:7]] == ["search"] * 5 + ["frozen"]
    assert steps[-1].state["skip_acceptance"] is not None
    json.dumps([s.state for s in steps])


# ---- early exit ------------------------------------------------------------------------------------

def test_exit_candidates_and_tokens_per_layer():
    assert candidate_exits(30, 4, 0.5) == [15, 20, 24, 29]
    assert candidate_exits(2, 4, 0.5) == [1]
    assert expected_tokens(0.0, 3) == 1.0 and expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_early_exit_picks_the_layer_with_the_best_tokens_per_layer(tiny):
    lm = tiny("llama", layers=8)
    m = EarlyExit(lm)
    assert m.exits == [4, 5, 6, 7]
    m.params.explore = 0.0
    m.hits.update({4: 1.0, 5: 95.0, 6: 96.0, 7: 97.0})
    m.trials.update({4: 100.0, 5: 100.0, 6: 100.0, 7: 100.0})
    e, g, _ = m.choose()
    assert e == 5 and g >= 3  # nearly as good as the deeper exits but cheaper; with alpha ~ 0.94 long drafts pay
    m.hits[5] = 10.0
    e, g, _ = m.choose()
    assert e == 6 and g >= 3


def test_early_exit_tracks_layers_and_leaves_the_cache(tiny):
    lm = tiny("gemma3", layers=4)
    seen = []

    class Spy(EarlyExit):
        def propose(self, seq, sampling, generator):
            snap = snapshot(self.target.cache)
            prop = super().propose(seq, sampling, generator)
            seen.append(same_cache(self.target.cache, snap))
            return prop

    m = Spy(lm)
    assert m.exits == [2, 3]
    steps = list(engine.decode(lm, m, [4, 8, 15, 16, 23, 42 % 32, 4, 8, 15, 16, 23, 10, 4, 8], max_new_tokens=30))
    assert all(seen) and len(seen) > 3
    decode = [s for s in steps if s.kind == "decode"]
    assert all(s.state["exit"] in (2, 3) and set(s.state["alpha"]) == {"2", "3"} for s in decode)
    assert any(s.state["shadow_hits"] for s in decode)  # exit 3 drafts also score exit 2
    json.dumps([s.state for s in steps])


# ---- all of them -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ZOO, ids=lambda c: c.name)
def test_states_are_json_and_reset_repeats(tiny, cls):
    lm = tiny("qwen2")
    m = cls(lm)
    cfg = SamplingConfig(temperature=0.8, seed=3)
    ids = [random.Random(1).randrange(32) for _ in range(12)]
    runs = []
    for _ in range(2):
        m.reset()
        steps = list(engine.decode(lm, m, ids, max_new_tokens=16, sampling=cfg))
        json.dumps([s.state for s in steps])
        runs.append([t for s in steps for t in s.tokens])
    assert runs[0] == runs[1]


def test_lookahead_sjd_trunk_through_the_engine_preserves_the_distribution(tiny):
    """The registry's sampling test verifies a single node per run (max_new_tokens=3 leaves a budget of one
    draft node). Here the budget leaves room for the pool candidate AND the q-sampled trunk as siblings under
    the root (N=2: the Jacobi outputs become the trunk, with their q, after one round), and the 2nd/3rd
    token marginals must still be exact."""
    from test_sampling import chi2, exact_marginals, make_prompt

    lm = tiny("llama")
    cfg = SamplingConfig(temperature=1.0)
    prompt = make_prompt(lm)
    exact2, exact3, _ = exact_marginals(lm, cfg, prompt)
    m = Lookahead(lm, LookaheadParams(window=3, ngram=2, guesses=1))
    t2, t3, trunk_wins = [], [], 0
    for seed in range(400):
        c = SamplingConfig(temperature=1.0, seed=seed)
        steps = list(engine.decode(lm, m, prompt, max_new_tokens=6, sampling=c, detail=False))
        toks = [t for s in steps for t in s.tokens]
        t2.append(toks[1])
        t3.append(toks[2])
        trunk_wins += sum(s.index == 2 and s.state.get("won") == "window" for s in steps)
    assert chi2(np.array(t2), exact2) > 1e-3 and chi2(np.array(t3), exact3) > 1e-3
    assert trunk_wins > 20  # q-sampled trunk tokens were accepted by the min(1, p/q) rule
