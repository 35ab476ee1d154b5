"""Static-template draft trees: a fixed tree shape (Medusa / EAGLE-1 choice list, Token Recycling's BFS
template, ...) filled in from a draft LM's distributions.

Cai et al. 2024, "Medusa" (ICML, arXiv:2401.10774) and Li et al. 2024, "EAGLE" (ICML, arXiv:2401.15077) verify
a fixed tree of sibling ranks: a node at template path (r1, ..., rd) holds the rank-rd candidate after its
parent. Here the candidates come from a draft LM that reads each parent token (EAGLE-style: every level is
conditioned on the token above it; Medusa's heads instead predict each depth from the root alone). The tree
is expanded level by level, one draft forward per level that has children (`labkit.drafter`).

Lossless. Greedy: ranks are the draft's top candidates and the target keeps the longest match. Sampling: a
node's children are its first m draws WITHOUT replacement from q (in template-rank order), verified by
recursive rejection sampling with the without-replacement residual (RSD's rule), so p is preserved exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import templates
from .. import tree
from ..drafter import DrafterMethod, draft_param, draw_children
from ..engine import Proposal
from ..params import param


@dataclass
class StaticTreeParams:
    draft: str = draft_param()
    template: str = param("mc_sim_7b_63", "the tree shape (labkit.templates)", choices=tuple(templates.TEMPLATES))
    nodes: int = param(24, "tree size: the template's first `nodes` entries (construction order)", lo=1, hi=80)


def fill_template(drafter, parents: list[int], ranks: list[int], root_q: torch.Tensor, dist, greedy: bool,
                  generator: torch.Generator) -> tuple[list[int], list[int], list[torch.Tensor]]:
    """Fill a rank template level by level. Returns (tokens, parents, q rows) of the nodes that could be filled
    (a node whose rank exceeds its parent's candidate count is dropped with its subtree).

    Greedy: node = the parent's rank-r top token. Sampling: the children of a node, in rank order, are that
    node's first draws without replacement (so ranks are re-numbered 0..m-1 per parent)."""
    n = len(parents)
    kids = tree.children(parents)
    depth = tree.depths(parents)
    tokens: list[int | None] = [None] * n
    qrow: list[torch.Tensor | None] = [None] * n
    node_q: dict[int, torch.Tensor] = {-1: root_q}
    for d in range(1, max(depth, default=0) + 1):
        level = [i for i in range(n) if depth[i] == d and (parents[i] < 0 or tokens[parents[i]] is not None)]
        for par in sorted({parents[i] for i in level}):
            sibs = sorted(kids[par + 1], key=lambda i: ranks[i])
            q = node_q[par]
            if greedy:
                cand = draw_children(q, max(ranks[i] for i in sibs) + 1, True, generator)
                picks = [ranks[i] for i in sibs]
            else:
                cand = draw_children(q, len(sibs), False, generator)
                picks = list(range(len(sibs)))
            for i, r in zip(sibs, picks):
                if r < len(cand):
                    tokens[i], qrow[i] = cand[r], q
        grow = [i for i in level if tokens[i] is not None and kids[i + 1]]
        if grow:
            for i, logits in zip(grow, drafter.expand(parents, tokens, grow)):
                node_q[i] = dist(logits)
    keep = [i for i in range(n) if tokens[i] is not None]
    new = {old: j for j, old in enumerate(keep)}
    return ([tokens[i] for i in keep], [new[parents[i]] if parents[i] >= 0 else -1 for i in keep],
            [qrow[i] for i in keep])


class StaticTree(DrafterMethod):
    name = "static_tree"
    title = "Static tree template (Medusa / EAGLE-1 choices) over a draft LM"
    paper = ("Cai et al. 2024, Medusa (ICML, arXiv:2401.10774); Li et al. 2024, EAGLE (ICML, arXiv:2401.15077); "
             "templates: Medusa's mc_sim_7b_63 / zephyr_stage2, Token Recycling's BFS tree (arXiv:2408.08696)")
    lossless = True
    Params = StaticTreeParams

    def __init__(self, lm, params=None, draft_lm=None):
        super().__init__(lm, params, draft_lm)
        choices = templates.get(self.params.template)
        self.choices = templates.first(choices, min(self.params.nodes, len(choices)))
        self.t_parents, self.t_ranks = tree.from_choices(self.choices)

    def build(self, seq, sampling, generator) -> tuple[list[int], list[int], list[torch.Tensor]]:
        root_q = self.dist(self.drafter.begin(seq), sampling)
        try:
            return fill_template(self.drafter, self.t_parents, self.t_ranks, root_q,
                                 lambda lg: self.dist(lg, sampling), sampling.greedy, generator)
        finally:
            self.drafter.end()

    def propose(self, seq, sampling, generator) -> Proposal:
        tokens, parents, qs = self.build(seq, sampling, generator)
        return Proposal(tokens=tokens, parents=parents, q=torch.stack(qs) if qs else None,
                        without_replacement=not sampling.greedy, draft_forwards=self.drafter.forwards,
                        state={"template": self.params.template, "template_nodes": len(self.t_parents),
                               "drafted": len(tokens), "depth": max(tree.depths(parents), default=0)})

    def describe(self) -> str:
        return (f"Static tree: {len(self.t_parents)} nodes of {self.params.template}, depth "
                f"{max(tree.depths(self.t_parents), default=0)}; {self.draft_note()}")
