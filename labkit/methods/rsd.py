"""Recursive Speculative Decoding: draft trees sampled WITHOUT replacement, verified by recursive rejection.

Jeon et al., "Recursive Speculative Decoding: Accelerating LLM Inference via Sampling Without Replacement",
arXiv:2402.14160 (2024). Siblings are distinct tokens drawn without replacement from the draft distribution q;
the target checks them one after another, and after each rejection both p and q are updated (p <- norm(max(0,
p - q)), q <- q without the rejected token), which keeps the output exactly p (`accept.rejection_tree` with
`without_replacement=True`). Two tree builders:

- RSD-C (`rsd_c`): a constant branching factor per level; a node's children are the first b_d draws of a
  Gumbel-top-k over its q.
- RSD-S (`rsd_s`): stochastic beam search (Kool et al. 2019, "Stochastic Beams and Where to Find Them", ICML):
  every level keeps the `beam` sequences with the largest Gumbel-perturbed log-probabilities (each child's
  perturbation is conditioned on its parent's), i.e. `beam` sequences sampled without replacement from q.

Greedy mode uses the draft's top tokens (RSD-C) and plain beam search on log q (RSD-S); the target keeps the
longest match. Both are lossless.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..drafter import DrafterMethod, draft_param, draw_children
from ..engine import Proposal
from ..params import ParamError, param

@dataclass
class RSDCParams:
    draft: str = draft_param()
    branching: str = param("3,2,2", "children per node at each depth, comma-separated (3,2,2 = 3 + 6 + 12 nodes)")


@dataclass
class RSDSParams:
    draft: str = draft_param()
    beam: int = param(4, "beam width: sequences kept per level", lo=1, hi=16)
    depth: int = param(4, "tree depth", lo=1, hi=16)


def parse_branching(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ParamError(f"branching={text!r}: expected comma-separated integers such as 3,2,2") from None
    if not out or any(b < 1 or b > 16 for b in out) or len(out) > 12:
        raise ParamError(f"branching={text!r}: 1 to 12 levels, each with 1 to 16 children")
    return out


class RSDConstant(DrafterMethod):
    name = "rsd_c"
    title = "RSD-C: constant-branching tree sampled without replacement"
    paper = ("Jeon et al. 2024, Recursive Speculative Decoding: Accelerating LLM Inference via Sampling Without "
             "Replacement (arXiv:2402.14160), RSD-C")
    lossless = True
    Params = RSDCParams

    def __init__(self, lm, params=None, draft_lm=None):
        super().__init__(lm, params, draft_lm)
        self.branching = parse_branching(self.params.branching)

    def propose(self, seq, sampling, generator) -> Proposal:
        tokens: list[int] = []
        parents: list[int] = []
        qs: list[torch.Tensor] = []
        level = [(-1, self.dist(self.drafter.begin(seq), sampling))]
        try:
            for d, b in enumerate(self.branching):
                new = []
                for par, q in level:
                    for x in draw_children(q, b, sampling.greedy, generator):
                        tokens.append(x)
                        parents.append(par)
                        qs.append(q)
                        new.append(len(tokens) - 1)
                if d + 1 == len(self.branching) or not new:
                    break
                logits = self.drafter.expand(parents, tokens, new)
                level = [(i, self.dist(lg, sampling)) for i, lg in zip(new, logits)]
        finally:
            self.drafter.end()
        return Proposal(tokens=tokens, parents=parents, q=torch.stack(qs) if qs else None,
                        without_replacement=not sampling.greedy, draft_forwards=self.drafter.forwards,
                        state={"branching": self.branching})

    def describe(self) -> str:
        return f"RSD-C: branching {self.params.branching} ({self.draft_note()})"


def _gumbel(shape, generator, device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def conditioned_gumbel(phi: torch.Tensor, parent_g: float, generator: torch.Generator) -> torch.Tensor:
    """Kool et al. 2019, Appendix B: perturb the children's log-probabilities `phi` with Gumbel noise, then shift
    them so that their maximum equals the parent's perturbed value `parent_g` (numerically stable form)."""
    g = phi + _gumbel(phi.shape, generator, phi.device)
    z = g.max()
    v = parent_g - g + torch.log1p(-torch.exp(g - z))
    out = parent_g - torch.clamp(v, min=0) - torch.log1p(torch.exp(-v.abs()))
    return torch.where(torch.isfinite(phi), out, torch.full_like(out, float("-inf")))


class RSDBeam(DrafterMethod):
    name = "rsd_s"
    title = "RSD-S: stochastic-beam-search tree sampled without replacement"
    paper = ("Jeon et al. 2024, Recursive Speculative Decoding (arXiv:2402.14160), RSD-S; stochastic beam search: "
             "Kool et al. 2019, Stochastic Beams and Where to Find Them (ICML)")
    lossless = True
    Params = RSDSParams

    def propose(self, seq, sampling, generator) -> Proposal:
        W = self.params.beam
        tokens: list[int] = []
        parents: list[int] = []
        qs: list[torch.Tensor] = []
        perturbed: list[float] = []
        # a beam: (node index, its draft distribution q, log q of its path, its perturbed value)
        beams = [(-1, self.dist(self.drafter.begin(seq), sampling), 0.0, 0.0)]
        try:
            for d in range(self.params.depth):
                cands = []  # (key, beam index, token, log-prob)
                for b, (_, q, phi, g) in enumerate(beams):
                    logq = torch.log(q)
                    key = phi + logq if sampling.greedy else conditioned_gumbel(phi + logq, g, generator)
                    m = min(W, int((q > 0).sum()))
                    top = torch.topk(key, m)
                    for k_, x in zip(top.values.tolist(), top.indices.tolist()):
                        cands.append((k_, b, x, phi + float(logq[x])))
                cands.sort(key=lambda c: -c[0])
                kept = sorted(cands[:W], key=lambda c: (c[1], -c[0]))  # grouped by parent, draw order within
                new = []
                for key_, b, x, phi_x in kept:
                    tokens.append(x)
                    parents.append(beams[b][0])
                    qs.append(beams[b][1])
                    perturbed.append(key_)
                    new.append((len(tokens) - 1, phi_x, key_))
                if d + 1 == self.params.depth or not new:
                    break
                logits = self.drafter.expand(parents, tokens, [i for i, _, _ in new])
                beams = [(i, self.dist(lg, sampling), phi_x, key_) for (i, phi_x, key_), lg in zip(new, logits)]
        finally:
            self.drafter.end()
        return Proposal(tokens=tokens, parents=parents, q=torch.stack(qs) if qs else None,
                        without_replacement=not sampling.greedy, draft_forwards=self.drafter.forwards,
                        state={"beam": W, "perturbed_logq" if not sampling.greedy else "logq":
                               [round(v, 4) for v in perturbed]})

    def describe(self) -> str:
        return f"RSD-S: stochastic beam search, beam {self.params.beam}, depth {self.params.depth} ({self.draft_note()})"
