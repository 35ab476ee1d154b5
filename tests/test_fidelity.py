"""Methods as published: each reference mode does what its paper's code does, on hand-made inputs (the
registry-wide tests cover every variant's losslessness)."""
import random

import pytest
import torch

from labkit import methods
from labkit.methods.prompt_lookup import find_continuation

pytestmark = pytest.mark.usefixtures("one_thread")


def test_prompt_lookup_first_match_drafts_what_transformers_drafts():
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    gen = PromptLookupCandidateGenerator(eos_token_id=None, num_output_tokens=10, max_matching_ngram_size=2,
                                         max_length=10_000)
    rng = random.Random(0)
    compared = 0
    for _ in range(300):
        seq = [rng.randrange(6) for _ in range(rng.randrange(3, 60))]
        ids = torch.tensor([seq])
        cand, _ = gen.get_candidates(ids)
        theirs = cand[0, len(seq):].tolist()
        ours = find_continuation(seq, 2, 1, 10, "first")[0]
        assert ours == theirs, seq
        compared += bool(ours)
    assert compared > 200  # most sequences had a match


def test_prompt_lookup_last_match_is_the_most_recent():
    seq = [1, 2, 7, 1, 2, 8, 1, 2]
    assert find_continuation(seq, 2, 1, 1, "first")[0] == [7]
    assert find_continuation(seq, 2, 1, 1, "last")[0] == [8]


def test_variants_are_listed_as_specs():
    assert "prompt_lookup:match=last" in methods.variants(lossless=True)
    assert methods.get("prompt_lookup:match=last") is methods.get("prompt_lookup")


def test_copy_spec_reference_copies_ten_after_the_first_occurrence_of_the_last_five(tiny):
    lm = tiny("llama")
    ref = methods.create("copy_spec:mode=reference", lm)
    own = methods.create("copy_spec", lm)
    head = [1, 2, 3, 4, 5]
    seq = head + [9, 8, 7, 6, 5, 4, 3, 2, 1, 11, 12, 13] + head + [20, 21] + head
    ref.start(seq, None)
    prop = ref.propose(seq, None, None)
    assert prop.tokens == [9, 8, 7, 6, 5, 4, 3, 2, 1, 11]  # the first occurrence, a fixed 10
    own.start(seq, None)
    assert own.propose(seq, None, None).tokens[:2] == [20, 21]  # labkit's: the most recent of the longest
    short = [1, 2, 3, 4, 6, 1, 2, 3, 4]  # the last 5 tokens never occurred before: no copy (the reference's gamma)
    ref.start(short, None)
    assert ref.propose(short, None, None).tokens == []


def test_aded_reference_counts_committed_trigrams_and_drafts_the_most_visited_paths(tiny):
    from labkit import tree

    m = methods.create("aded:mode=reference", tiny("llama"))
    prompt = [1, 2, 3, 1, 2, 4, 1, 2, 3]
    m.start(prompt, None)
    assert m.counts[(1, 2)] == pytest.approx({3: 0.08, 4: 0.04}) and m.counts[(2, 3)] == pytest.approx({1: 0.04})
    prop = m.propose(prompt, None, None)
    paths = {tuple(prop.tokens[i] for i in tree.path_to(prop.parents, leaf)) for leaf in tree.leaves(prop.parents)}
    assert paths == {(1, 2, 3, 1, 2), (1, 2, 4, 1, 2)}  # both continuations the table knows, greedily extended
    assert prop.state["simulations"] == 150 and max(tree.depths(prop.parents)) <= m.params.depth
    first = [b for t, b in zip(prop.tokens, prop.state["branches"]) if t == 1][0]
    assert first["u"] > 0  # visits, most on the likely path


def test_aded_reference_starts_empty_without_a_prompt_to_learn_from(tiny):
    m = methods.create("aded:mode=reference", tiny("llama"))
    m.start([5, 6], None)
    assert m.counts == {} and m.propose([5, 6], None, None).tokens == []


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_swift_sub_layers_skip_attention_and_mlp_separately(tiny, arch):
    from labkit.engine import Target
    from labkit.layers import LayerStack, scratch

    lm = tiny(arch, layers=4)
    stack = LayerStack(lm)
    target = Target(lm)
    ids = [3, 8, 5, 1, 9, 4, 3, 8]
    target.prefill(ids)
    attn_before = [layer.self_attn for layer in stack.layers]

    def run(**plan):
        with scratch(target.cache):
            return stack.logits(stack.run(target.cache, [7, 2], len(ids), **plan)[0])

    both = run(layers=[0, 1, 2, 3], skip_attention=frozenset({2}), skip_mlp=frozenset({2}))
    assert torch.allclose(both, run(layers=[0, 1, 3]), atol=1e-5)  # both sub-layers off = the layer off
    attn_only = run(layers=[0, 1, 2, 3], skip_attention=frozenset({2}))
    assert not torch.allclose(attn_only, both, atol=1e-3)  # the MLP still runs
    assert [layer.self_attn for layer in stack.layers] == attn_before  # the model is put back
    assert all(len(layer.keys[0, 0]) == len(ids) for layer in target.cache.layers)  # the cache too


def test_swift_counts_sub_layers_by_default(tiny):
    m = methods.create("swift", tiny("llama", layers=4))
    assert m.n_units == 8 and m.exclusive_model
    assert methods.create("swift:granularity=layer", tiny("llama", layers=4)).n_units == 4
