"""The two methods that join the lab's halves: SuffixDecoding (retrieval drafts from suffix tries) and
self-speculation through a sparse KV cache. The registry-wide tests cover their defaults and variants; these
tests reach what short tiny prompts do not: a draft that really reads a sparse cache, the tries' counts, and
the history across prompts."""
import dataclasses

import numpy as np
import pytest
import torch

from labkit import backends, engine, methods
from labkit.check import greedy_reference
from labkit.methods.suffix import SuffixTrie
from labkit.sampling import SamplingConfig

SPARSE = ["sparse_self_spec:budget=4:sinks=1", "sparse_self_spec:policy=token_select:budget=6:sinks=1"]
PATHS = [b for b in backends.BACKENDS if b == "stock" or backends.fast_available("cpu", torch.float32) is None]


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("spec", SPARSE)
def test_a_draft_through_a_sparse_cache_is_verified_exactly(tiny, spec, arch, backend):
    lm = tiny(arch, backend=backend)
    m = methods.create(spec, lm)
    ids = [3, 8, 5, 1, 9, 4, 3, 8, 5, 1, 7, 2, 6, 3, 8, 5]  # longer than the budget: the draft reads a sparse view
    steps = list(engine.decode(lm, m, ids, max_new_tokens=30))
    assert [t for s in steps for t in s.tokens] == greedy_reference(lm, ids, 30)
    views = [s.state["draft_view"] for s in steps if s.kind == "decode"]
    assert all(max(v["kept"]) < 1.0 for v in views)  # every layer read only part of the committed entries
    assert sum(len(s.accepted) for s in steps) > 0


def test_a_sparse_draft_keeps_the_target_distribution(tiny):
    from test_sampling import P_MIN, chi2, exact_marginals, make_prompt

    lm = tiny("llama")
    prompt = make_prompt(lm)
    cfg = SamplingConfig(temperature=1.0)
    exact = exact_marginals(lm, cfg, prompt)
    m = methods.create(SPARSE[0], lm)
    seen, drafted = [[], [], []], 0
    for seed in range(600):
        steps = list(engine.decode(lm, m, prompt, max_new_tokens=4, sampling=dataclasses.replace(cfg, seed=seed),
                                   detail=False))
        toks = [t for s in steps for t in s.tokens]
        for i in range(3):
            seen[i].append(toks[i + 1])
        drafted += sum(len(s.nodes) for s in steps)
    assert all(chi2(np.array(seen[i]), exact[i]) > P_MIN for i in range(3))
    assert drafted >= 600 * 2  # every run verified a chain of two sparse drafts (the 4-token budget allows it)


def test_suffix_trie_counts_and_grows_by_path_probability():
    trie = SuffixTrie(depth=4)
    trie.extend([1, 2, 3, 1, 2, 4, 1, 2, 3])
    node, m = trie.match([9, 1, 2])
    assert m == 2 and {t: c.count for t, c in node.children.items()} == {3: 2, 4: 1}
    tokens, parents, probs = trie.grow(node, budget=8, min_prob=0.0)
    # most probable paths first: 3 (2/3), then 3's only continuation 1 (2/3 x 1), then 4 (1/3) and its 1
    assert tokens == [3, 1, 4, 1] and parents == [-1, 0, -1, 2]
    assert probs == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3])
    assert trie.grow(node, budget=8, min_prob=0.5)[0] == [3, 1]
    assert trie.grow(node, budget=1, min_prob=0.0)[0] == [3]


def test_suffix_drafts_from_earlier_outputs(tiny):
    lm = tiny("llama")
    m = methods.create("suffix", lm)
    ids = [4, 7, 1]
    first = list(engine.decode(lm, m, ids, max_new_tokens=30))
    again = list(engine.decode(lm, m, ids, max_new_tokens=30))  # the same request: its answer is in the history
    assert [t for s in again for t in s.tokens] == [t for s in first for t in s.tokens]
    sources = {s.state["source"] for s in again if s.kind == "decode" and s.nodes}
    assert "history" in sources
    assert sum(len(s.accepted) for s in again) > sum(len(s.accepted) for s in first)
