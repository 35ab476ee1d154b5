"""The zoo's tree builders and acceptance rules on toy vocabularies: the output distribution must equal p.

- K-SEQ (SpecTr's k-sequential selection) as a pure rule, for k = 1..4, with two deliberately wrong variants
  (the single-draft residual; no division factor) that the same chi-square test catches, and its acceptance
  advantage over a single draft.
- Every lossless tree method of the zoo (static template, DySpec, RSD-C, RSD-S, SpecTr, adaptive length) run
  end to end -- propose, then the method's own acceptance rule -- in a toy world whose draft and target
  distributions depend on the context. Full-size trees (the engine tests cut them to one node at 3 tokens):
  the first token must follow p(. | prompt), and the second, given the first was an accepted draft, p(. | x1).
"""
import functools

import numpy as np
import pytest
import torch

from labkit import accept
from labkit import sampling
from labkit.drafter import draw_children
from labkit.methods.adaptive_length import AdaptiveLength, AdaptiveLengthParams
from labkit.methods.dyspec import DySpec, DySpecParams
from labkit.methods.rsd import RSDBeam, RSDConstant, RSDCParams, RSDSParams, conditioned_gumbel
from labkit.methods.spectr import SpecTr, SpecTrParams
from labkit.methods.static_tree import StaticTree, StaticTreeParams
from labkit.testing import toy_dist, chi2_pvalue

V = 6


def dist(seed, v=V, peaked=1.0):
    return toy_dist(seed, v, peaked)


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- K-SEQ as a pure rule ----------------------------------------------------------------------------

def kseq_samples(p, q, k, n, seed=0, rule=accept.kseq):
    g = torch.Generator().manual_seed(seed)
    rho = accept.kseq_rho(p, q, k)  # computed once: the rule would recompute the same value for every sample
    out, accepted = [], 0
    for _ in range(n):
        draws = torch.multinomial(q, k, replacement=True, generator=g).tolist()
        hit, _, res = rule(p, q, draws, g, rho=rho)
        if hit is None:
            out.append(int(torch.multinomial(res, 1, generator=g)))
        else:
            out.append(draws[hit])
            accepted += 1
    return np.array(out), accepted / n


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_kseq_preserves_p(k):
    p, q = dist(1), dist(2, peaked=1.5)
    samples, _ = kseq_samples(p, q, k, 8000, seed=k)
    assert chi2_pvalue(samples, p) > 1e-3


def _single_draft_residual(p, q, draws, g, rho):
    """Bug on purpose: K-SEQ acceptance, but the single-draft residual norm(max(0, p - q)) after k rejections."""
    hit, decs, _ = accept.kseq(p, q, draws, g, rho=rho)
    return hit, decs, accept.residual(p, q)


def _no_division(p, q, draws, g, rho):
    """Bug on purpose: k draws each accepted with min(1, p/q) (rho = 1), residual for rho = 1."""
    hit, decs, _ = accept.kseq(p, q, draws, g, rho=1.0)
    return hit, decs, accept.kseq_residual(p, q, len(draws), 1.0)


@pytest.mark.parametrize("wrong", [_single_draft_residual, _no_division])
def test_kseq_wrong_variants_are_caught(wrong):
    p, q = dist(1), dist(2, peaked=1.5)
    samples, _ = kseq_samples(p, q, 3, 4000, seed=7, rule=wrong)
    assert chi2_pvalue(samples, p) < 1e-6


def test_kseq_rho_and_acceptance_advantage():
    p, q = dist(1), dist(2, peaked=1.5)
    single = float(torch.minimum(p, q).sum())
    assert accept.kseq_rho(p, q, 1) == 1.0
    assert abs(accept.kseq_accept_prob(p, q, 1) - single) < 1e-6
    previous = single
    for k in (2, 3, 4):
        rho = accept.kseq_rho(p, q, k)
        assert 1.0 <= rho <= k
        assert float(accept.kseq_residual(p, q, k, rho).min()) >= 0
        acc = accept.kseq_accept_prob(p, q, k)
        assert acc > previous + 1e-3  # more drafts, strictly more acceptance here
        previous = acc
        _, empirical = kseq_samples(p, q, k, 4000, seed=10 + k)
        assert abs(empirical - acc) < 4 * (acc * (1 - acc) / 4000) ** 0.5 + 1e-3
    assert accept.kseq_rho(p, p, 3) == 1.0 and abs(accept.kseq_accept_prob(p, p, 3) - 1.0) < 1e-6  # draft = target


def test_spectr_tree_two_levels_and_cut_level():
    """Two levels of k = 3 sequences (the second level cut to its first two sequences, as the engine's token
    budget can do): the first token follows p, the second follows p(. | x1)."""
    k = 3
    p0, q0 = dist(3), dist(4, peaked=1.5)
    p1 = torch.stack([dist(100 + x) for x in range(V)])
    q1 = torch.stack([dist(200 + x, peaked=1.5) for x in range(V)])
    g = torch.Generator().manual_seed(5)
    first, second = [], {x: [] for x in range(V)}
    for _ in range(5000):
        x1 = torch.multinomial(q0, k, replacement=True, generator=g).tolist()
        x2 = [int(torch.multinomial(q1[x], 1, generator=g)) for x in x1][:2]  # level 2 cut to 2 sequences
        tokens = x1 + x2
        parents = [-1, -1, -1, 0, 1]
        p_rows = torch.stack([p0] + [p1[t] for t in x1] + [p0, p0])  # rows under level-2 nodes are unused
        q_rows = torch.stack([q0, q0, q0] + [q1[t] for t in x1[:2]])
        out = accept.spectr_tree(parents, tokens, k, p_rows, q_rows, g)
        assert all(parents[b] == a for a, b in zip(out.path, out.path[1:]))  # a chain in the tree
        # what the figure shows is what happened: no untested ("not reached") node has a tested child
        for i, d in enumerate(out.decisions):
            if d.status != accept.NOT_REACHED and parents[i] >= 0:
                assert out.decisions[parents[i]].status != accept.NOT_REACHED, (tokens, out.decisions)
        t1 = tokens[out.path[0]] if out.path else out.bonus
        first.append(t1)
        if out.path:
            second[t1].append(tokens[out.path[1]] if len(out.path) > 1 else out.bonus)
    assert chi2_pvalue(np.array(first), p0) > 1e-3
    for x, s in second.items():
        if len(s) > 300:
            assert chi2_pvalue(np.array(s), p1[x]) > 1e-3


# ---- sampling without replacement -------------------------------------------------------------------

def test_draw_children_is_sampling_without_replacement():
    q = dist(8, peaked=1.5)
    g = torch.Generator().manual_seed(1)
    firsts, seconds = [], []
    for _ in range(5000):
        a, b = draw_children(q, 2, False, g)
        firsts.append(a)
        if a == int(q.argmax()):
            seconds.append(b)
    assert chi2_pvalue(np.array(firsts), q) > 1e-3
    rest = q.clone()
    rest[int(q.argmax())] = 0
    assert chi2_pvalue(np.array(seconds), rest / rest.sum()) > 1e-3
    assert draw_children(q, 3, True, g) == torch.topk(q, 3).indices.tolist()
    assert len(draw_children(torch.tensor([0.5, 0.5, 0.0, 0.0]), 4, False, g)) == 2  # never a q = 0 token


def test_conditioned_gumbel_keeps_the_parent_max_and_the_order():
    g = torch.Generator().manual_seed(2)
    phi = torch.log(dist(9))
    out = conditioned_gumbel(phi, -1.3, g)
    assert abs(float(out.max()) + 1.3) < 1e-5 and bool((out <= -1.3 + 1e-6).all())
    phi[2] = float("-inf")
    assert float(conditioned_gumbel(phi, 0.0, g)[2]) == float("-inf")


# ---- every lossless tree method, end to end, in a toy world ----------------------------------------

class ToyLM:
    """Stands in for an LM where the methods only need a device (and a config for the drafter)."""

    device = torch.device("cpu")
    dtype = torch.float32
    name = "toy"
    source = "toy"

    class config:
        layer_types = None
        sliding_window = None


@functools.lru_cache(maxsize=None)
def _table(last_two: tuple, salt: int, peaked: float) -> torch.Tensor:
    return dist(hash((last_two, salt)) % (2 ** 31), peaked=peaked)


def table(context: tuple, salt: int, peaked: float) -> torch.Tensor:
    """A distribution that depends on the last two tokens of the context."""
    return _table(tuple(context[-2:]), salt, peaked)


class ToyDrafter:
    """The `TreeDrafter` interface over the toy world's draft tables."""

    def __init__(self):
        self.lm = ToyLM()
        self.seq = ()
        self.forwards = 0

    def begin(self, seq):
        self.seq, self.forwards = tuple(seq), 1
        return torch.log(table(self.seq, 1, 1.5))

    def expand(self, parents, tokens, nodes):
        self.forwards += 1
        rows = []
        for i in nodes:
            path = []
            while i >= 0:
                path.append(tokens[i])
                i = parents[i]
            rows.append(torch.log(table(self.seq + tuple(path[::-1]), 1, 1.5)))
        return torch.stack(rows)

    def end(self):
        pass


def target_rows(seq, tokens, parents):
    rows = [table(tuple(seq), 0, 1.0)]
    for i in range(len(tokens)):
        path, j = [], i
        while j >= 0:
            path.append(tokens[j])
            j = parents[j]
        rows.append(table(tuple(seq) + tuple(path[::-1]), 0, 1.0))
    return torch.stack(rows)


def toy_method(cls, params):
    m = cls(ToyLM(), params, draft_lm=ToyLM())
    m.drafter = ToyDrafter()
    return m


ZOO = {
    "static_tree": (StaticTree, StaticTreeParams(template="top3_depth3", nodes=9)),
    "dyspec": (DySpec, DySpecParams(nodes=9, per_forward=3, max_children=4)),
    "rsd_c": (RSDConstant, RSDCParams(branching="3,2")),
    "rsd_s": (RSDBeam, RSDSParams(beam=3, depth=3)),
    "spectr": (SpecTr, SpecTrParams(k=3, draft_len=2)),
    "adaptive_length": (AdaptiveLength, AdaptiveLengthParams(stop_below=0.3, max_len=3)),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_tree_preserves_p(name):
    cls, params = ZOO[name]
    m = toy_method(cls, params)
    cfg = sampling.SamplingConfig(temperature=1.0)
    prompt = [1, 4]
    g = torch.Generator().manual_seed(11)
    p0 = table(tuple(prompt), 0, 1.0)
    first, second, sizes = [], {x: [] for x in range(V)}, []
    for _ in range(3000):
        prop = m.propose(prompt, cfg, g)
        logits = torch.log(target_rows(prompt, prop.tokens, prop.parents))
        out = m.accept(prop, logits, cfg, g, str)
        sizes.append(len(prop.tokens))
        x1 = prop.tokens[out.path[0]] if out.path else out.bonus
        first.append(x1)
        if out.path:
            second[x1].append(prop.tokens[out.path[1]] if len(out.path) > 1 else out.bonus)
    assert max(sizes) > 1  # whole trees, not single nodes
    assert chi2_pvalue(np.array(first), p0) > 1e-3
    tested = 0
    for x, s in second.items():
        if len(s) > 300:
            assert chi2_pvalue(np.array(s), table(tuple(prompt) + (x,), 0, 1.0)) > 1e-3, f"second token after {x}"
            tested += 1
    assert tested >= 1
