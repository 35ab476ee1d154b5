"""DySpec: grow the draft tree at run time, always expanding the most promising node.

Xiong et al., "DySpec: Faster Speculative Decoding with Dynamic Token Tree Structure", arXiv:2410.11744 (2024).
A node's value is its cumulative draft probability (the product of q along its path), which the paper shows
tracks its acceptance probability. Candidates sit in a max-heap: the next child of every expanded node. Each
step pops the best candidate, adds it to the tree and pushes its next sibling; once a node is in the tree, a
draft forward gives its children's distribution and its first child becomes a candidate. The tree stops
growing when the node budget is spent.

Batching (ours, for CPU): up to `per_forward` candidates are popped between two draft forwards, so the tree
grows in a few batched forwards instead of one forward per node (the paper expands greedily one node at a time;
its threshold variant also batches).

Lossless. Greedy: children are the draft's top tokens, valued by val(parent) * q(x). Sampling: children are
draws without replacement (Gumbel-top-k) verified with the without-replacement residual; so that the tree
shape never depends on a token before that token is drawn, a not-yet-drawn sibling is valued by its EXPECTED
draft probability, val(parent) * sum_{x not drawn} q(x)^2 / (1 - q(drawn)) (a deviation from the paper, which
values sampled nodes by their own q(x); peeking at x before deciding to draft it would bias the output).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from ..drafter import DrafterMethod, draft_param, draw_children
from ..engine import Proposal
from ..params import param


@dataclass
class DySpecParams:
    draft: str = draft_param()
    nodes: int = param(24, "node budget of the tree", lo=1, hi=128)
    per_forward: int = param(8, "candidates added between two draft forwards (1 = the paper's one-at-a-time)",
                             lo=1, hi=64)
    max_children: int = param(8, "children considered per node", lo=1, hi=32)


class _Expanded:
    """A node whose children's distribution is known: its candidate children, in draw order."""

    def __init__(self, node: int, value: float, q: torch.Tensor, order: list[int]):
        self.node, self.value, self.q, self.order = node, value, q, order
        self.next = 0  # index in `order` of the next child to offer
        self.q_drawn = 0.0  # q mass of the children drawn so far
        self.sq_drawn = 0.0  # sum of q^2 over them
        self.sq_total = float((q * q).sum())

    def next_value(self, greedy: bool) -> float:
        if greedy:
            return self.value * float(self.q[self.order[self.next]])
        rest = 1.0 - self.q_drawn
        return self.value * (self.sq_total - self.sq_drawn) / rest if rest > 1e-9 else 0.0

    def take(self) -> int:
        x = self.order[self.next]
        qx = float(self.q[x])
        self.next += 1
        self.q_drawn += qx
        self.sq_drawn += qx * qx
        return x


class DySpec(DrafterMethod):
    name = "dyspec"
    title = "DySpec: dynamic tree, greedy expansion by cumulative draft probability"
    paper = "Xiong et al. 2024, DySpec: Faster Speculative Decoding with Dynamic Token Tree Structure (arXiv:2410.11744)"
    lossless = True
    Params = DySpecParams

    def propose(self, seq, sampling, generator) -> Proposal:
        P = self.params
        greedy = sampling.greedy
        root_q = self.dist(self.drafter.begin(seq), sampling)
        tokens: list[int] = []
        parents: list[int] = []
        qs: list[torch.Tensor] = []
        values: list[float] = []
        heap: list[tuple[float, int, _Expanded]] = []
        tie = 0

        def offer(e: _Expanded) -> None:
            nonlocal tie
            if e.next < len(e.order):
                heapq.heappush(heap, (-e.next_value(greedy), tie, e))
                tie += 1

        def expanded(node: int, value: float, q: torch.Tensor) -> _Expanded:
            return _Expanded(node, value, q, draw_children(q, P.max_children, greedy, generator))

        offer(expanded(-1, 1.0, root_q))
        batches = []
        try:
            while heap and len(tokens) < P.nodes:
                added = []
                while heap and len(added) < P.per_forward and len(tokens) < P.nodes:
                    _, _, e = heapq.heappop(heap)
                    x = e.take()
                    tokens.append(x)
                    parents.append(e.node)
                    qs.append(e.q)
                    values.append(e.value * float(e.q[x]))
                    added.append(len(tokens) - 1)
                    offer(e)
                batches.append(len(added))
                if len(tokens) >= P.nodes:
                    break
                for i, logits in zip(added, self.drafter.expand(parents, tokens, added)):
                    offer(expanded(i, values[i], self.dist(logits, sampling)))
        finally:
            self.drafter.end()
        return Proposal(tokens=tokens, parents=parents, q=torch.stack(qs) if qs else None,
                        without_replacement=not greedy, draft_forwards=self.drafter.forwards,
                        state={"budget": P.nodes, "added_per_forward": batches,
                               "value": [round(v, 5) for v in values]})

    def describe(self) -> str:
        P = self.params
        return (f"DySpec: {P.nodes}-node dynamic tree, {P.per_forward} nodes per draft forward, up to "
                f"{P.max_children} children per node; {self.draft_note()}")
