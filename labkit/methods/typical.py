"""Typical acceptance (Medusa-2): accept draft tokens the target finds 'typical enough' -- LOSSY.

Cai et al., "Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding Heads", ICML 2024
(arXiv:2401.10774), Section 2.3.1. A candidate x after a prefix is accepted when the target gives it
p(x) > min(epsilon, alpha * exp(-H(p))); the longest accepted tree path wins and the next token is sampled from
p after it (`accept.typical_tree`). Medusa's defaults: epsilon (posterior_threshold) = 0.09, alpha = 0.3.

The tree is a static template filled with the draft LM's top candidates (deterministic, as Medusa's heads'
top-k), so an accepted token is chosen, not sampled: the output is NOT the target distribution.

Departure from Medusa: Medusa's first candidate token is the base model's own (from its LM head at the root) and
is always accepted; only the heads' tokens after it face the typical test. Here the tree's depth-1 tokens come
from the draft LM and face the test like every other depth (the round's own target token is the bonus). Greedy runs
(temperature 0) use greedy longest-match verification, as Medusa does, and are token-identical to the baseline.

What it costs, per round (Step.state): `tv_first` is the exact total-variation distance between the
distribution of this round's first new token and the target's p at the root (a deterministic accepted token x
gives 1 - p(x); nothing accepted gives 0), and `tv_bound` = 1 - tau, which bounds it (`accept.typical_tv_bound`).
`tests/test_lossy.py` measures the TV on toy vocabularies.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..accept import Outcome, greedy_tree, typical_tree, typical_tv_bound
from ..sampling import SamplingConfig, probs
from .. import templates
from ..engine import Proposal, Verified
from ..drafter import draft_param
from ..params import param
from .static_tree import StaticTree


@dataclass
class TypicalParams:
    draft: str = draft_param()
    template: str = param("mc_sim_7b_63", "the tree shape (labkit.templates)", choices=tuple(templates.TEMPLATES))
    nodes: int = param(24, "tree size: the template's first `nodes` entries", lo=1, hi=80)
    epsilon: float = param(0.09, "hard probability threshold (Medusa's posterior_threshold)", lo=0.0, hi=1.0)
    alpha: float = param(0.3, "entropy-scaled threshold factor (Medusa's posterior_alpha)", lo=0.0, hi=1.0)


class TypicalAcceptance(StaticTree):
    name = "typical_acceptance"
    title = "Typical acceptance (Medusa-2), lossy"
    paper = "Cai et al. 2024, Medusa (ICML, arXiv:2401.10774), Sec. 2.3.1 typical acceptance"
    lossless = False
    Params = TypicalParams

    def propose(self, seq, sampling, generator) -> Proposal:
        # deterministic top-ranked candidates in every mode (Medusa's heads' top-k)
        greedy = SamplingConfig()
        prop = super().propose(seq, greedy, generator)
        prop.without_replacement = False
        return prop

    def accept(self, prop, logits, sampling, generator, label) -> Outcome:
        if sampling.greedy:
            return greedy_tree(prop.parents, prop.tokens, logits.argmax(-1).tolist(), label)
        return typical_tree(prop.parents, prop.tokens, probs(logits, sampling), generator,
                              epsilon=self.params.epsilon, alpha=self.params.alpha)

    def start(self, prompt, sampling) -> None:
        super().start(prompt, sampling)
        self._sampling = sampling
        self._tv: list[float] = []

    def observe(self, v: Verified) -> dict:
        if self._sampling.greedy:
            return {"tv_first": 0.0, "note": "greedy: longest-match verification, lossless"}
        p0 = probs(v.logits[0], self._sampling)
        tv = 1.0 - float(p0[v.proposal.tokens[v.path[0]]]) if v.path else 0.0
        self._tv.append(tv)
        return {"tv_first": round(tv, 4), "tv_bound": round(typical_tv_bound(p0, self.params.epsilon,
                                                                                  self.params.alpha), 4),
                "tv_mean_so_far": round(sum(self._tv) / len(self._tv), 4)}

    def describe(self) -> str:
        P = self.params
        return (f"Typical acceptance (LOSSY when sampling: faster, not the same distribution): p(x) > "
                f"min({P.epsilon:g}, {P.alpha:g} e^-H); {len(self.t_parents)}-node {P.template} tree; "
                f"{self.draft_note()}")
