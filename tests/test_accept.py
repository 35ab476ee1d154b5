"""Acceptance rules on toy vocabularies: the output distribution must equal the target's.

Chi-square goodness of fit with enough samples to catch a wrong rule; a deliberately wrong rule
(resampling from p instead of the residual after a rejection) is shown to fail the same test.
"""
import numpy as np
import pytest
import torch

from labkit import accept
from labkit.trace import ACCEPTED, NOT_REACHED, REJECTED
from labkit.testing import toy_dist, chi2_pvalue

V = 6


def dist(seed, v=V, peaked=1.0):
    return toy_dist(seed, v, peaked)


N = 12000


def first_token(out, tokens):
    return tokens[out.path[0]] if out.path else out.bonus


def run_rule(rule, parents, p_rows, q_rows, draw_tokens, n=N, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        tokens = draw_tokens(g)
        out = rule(parents, tokens, p_rows, q_rows, g, **kw)
        samples.append(first_token(out, tokens))
    return np.array(samples)


def wrong_rule(parents, tokens, p, q, g, **kw):
    """Bug on purpose: after a rejection, sample the bonus from p instead of norm(max(0, p - q))."""
    out = accept.rejection_tree(parents, tokens, p, q, g, **kw)
    if not out.path:
        out.bonus = int(torch.multinomial(p[0], 1, generator=g))
    return out


def test_chain_speculative_sampling_preserves_p():
    p, q = dist(1), dist(2)
    samples = run_rule(accept.rejection_tree, [-1], torch.stack([p, p]), q[None],
                       lambda g: [int(torch.multinomial(q, 1, generator=g))])
    assert chi2_pvalue(samples, p) > 1e-3


def test_wrong_rule_is_caught():
    p, q = dist(1), dist(2)
    samples = run_rule(wrong_rule, [-1], torch.stack([p, p]), q[None],
                       lambda g: [int(torch.multinomial(q, 1, generator=g))])
    assert chi2_pvalue(samples, p) < 1e-6


@pytest.mark.parametrize("without_replacement", [False, True])
def test_multi_draft_siblings_preserve_p(without_replacement):
    """SpecInfer (iid siblings) and RSD (siblings without replacement) recursive rejection."""
    p, q = dist(3), dist(4, peaked=0.5)
    k = 3

    def draw(g):
        return torch.multinomial(q, k, replacement=not without_replacement, generator=g).tolist()

    samples = run_rule(accept.rejection_tree, [-1] * k, p[None].repeat(k + 1, 1), q[None].repeat(k, 1), draw,
                       without_replacement=without_replacement)
    assert chi2_pvalue(samples, p) > 1e-3


def test_multi_draft_wrong_residual_is_caught():
    """Treating without-replacement siblings as iid (no q update) biases the result."""
    p, q = dist(3), dist(4, peaked=2.0)
    k = 3
    samples = run_rule(accept.rejection_tree, [-1] * k, p[None].repeat(k + 1, 1), q[None].repeat(k, 1),
                       lambda g: torch.multinomial(q, k, replacement=False, generator=g).tolist(),
                       without_replacement=False)
    assert chi2_pvalue(samples, p) < 1e-6


def test_point_mass_tree_preserves_p():
    """Deterministic drafts (Token Recycling, prompt lookup): siblings are fixed tokens, q = one-hot."""
    p = dist(5)
    samples = run_rule(accept.rejection_tree, [-1, -1, -1], p[None].repeat(4, 1), None, lambda g: [2, 0, 5])
    assert chi2_pvalue(samples, p) > 1e-3


def test_two_level_tree_second_token_is_conditional_p():
    """Depth 2: given the first token x1 was accepted, the next token must follow p(. | x1)."""
    p0 = dist(6)
    p2 = torch.stack([dist(100 + x) for x in range(V)])  # p(. | x1)
    parents = [-1, -1, 0, 0, 1]  # two first-level drafts, children under each
    tokens = [1, 3, 0, 4, 2]
    p_rows = torch.stack([p0] + [p2[t] for t in tokens])
    g = torch.Generator().manual_seed(7)
    second = {1: [], 3: []}
    for _ in range(N):
        out = accept.rejection_tree(parents, tokens, p_rows, None, g)
        if out.path:
            x1 = tokens[out.path[0]]
            x2 = tokens[out.path[1]] if len(out.path) > 1 else out.bonus
            second[x1].append(x2)
    for x1, s in second.items():
        assert len(s) > 500
        assert chi2_pvalue(np.array(s), p2[x1]) > 1e-3


def test_decisions_and_reasons():
    p = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1, 0, 0.0]])
    g = torch.Generator().manual_seed(0)
    out = accept.rejection_tree([-1, -1, 1], [0, 1, 0], p, None, g)
    assert out.path == [1] and out.bonus == 2 and out.bonus_how == "resampled from residual"
    assert [d.status for d in out.decisions] == [REJECTED, ACCEPTED, REJECTED]
    assert out.decisions[0].reason.startswith("u=") and "p/q=0.00" in out.decisions[0].reason


def test_greedy_tree_longest_match():
    # target argmax per verify position: root -> 7, node0 -> 8, node1 -> 9, node2 -> 5
    argmax = [7, 8, 9, 5, 0]
    out = accept.greedy_tree([-1, -1, 1, 1], [3, 7, 1, 9], argmax)
    assert out.path == [1, 3] and out.bonus == 0 and out.bonus_how == "argmax"
    st = [d.status for d in out.decisions]
    assert st == [REJECTED, ACCEPTED, REJECTED, ACCEPTED]
    assert out.decisions[0].reason == "argmax was '7'"
    out = accept.greedy_tree([-1, 0], [4, 4], [7, 7, 7])
    assert out.path == [] and out.bonus == 7
    assert [d.status for d in out.decisions] == [REJECTED, NOT_REACHED]
    assert out.decisions[1].reason == "parent not accepted"
