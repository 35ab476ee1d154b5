"""LANTERN: relaxed speculative sampling that accepts tokens close to the target's choice in embedding space
-- LOSSY.

Jang et al., "LANTERN: Accelerating Visual Autoregressive Models with Relaxed Speculative Decoding", ICLR 2025
(arXiv:2410.03355). Tokens whose latent vectors are near each other are treated as interchangeable: a drafted
x is accepted with probability min(1, (p(x) + p(A(x))) / q(x)), where the latent proximity set A(x) is the
longest prefix of x's k nearest neighbours whose total target mass stays <= delta (`accept.lantern_chain`).
Rejections resample from norm(max(0, p - q)): the standard speculative-sampling residual. Departure: the
reference LANTERN code forms its residual differently (an audit of it found so), so the tokens resampled after a
rejection are not distributed as the reference's; acceptance follows the paper's rule. LANTERN targets image-token models (neighbours in the VQ
codebook); here the latent space is the target's input embedding matrix (cosine similarity), which for text
mostly pairs spelling/casing variants (' the' ~ ' The').

Drafts are chains from the draft LM (`labkit.drafter`), sampled from q. Greedy runs use exact longest-match
verification (lossless). The output distribution differs from p by at most E in total variation, where E is
the extra acceptance mass the relaxation buys (derivation in `accept.py`); Step.state reports, per round, an
upper bound on E at the first position (`tv_bound`, over the 8 tokens the draft over-proposes most, plus the
rest's whole excess q - p) and how many tokens were accepted only thanks to the relaxation.
`tests/test_lossy.py` measures the TV on toy vocabularies.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..accept import Outcome, lantern_chain, lantern_mass
from ..sampling import probs
from ..drafter import DrafterMethod, draft_param
from ..engine import Proposal, Verified
from ..params import param


@dataclass
class LanternParams:
    draft: str = draft_param()
    draft_len: int = param(4, "tokens drafted per round", lo=1, hi=32)
    k: int = param(8, "nearest neighbours (in embedding space) considered per token", lo=1, hi=64)
    delta: float = param(0.15, "most target mass a token may borrow from its neighbours (per-token TV budget)",
                         lo=0.0, hi=1.0)


class Neighbours:
    """k nearest tokens by cosine similarity of the target's input embeddings, computed lazily and cached."""

    def __init__(self, emb: torch.Tensor, k: int):
        self.emb = emb.detach()
        self.norm = self.emb.float().norm(dim=-1).clamp_min(1e-12)
        self.k = min(k, self.emb.shape[0] - 1)
        self.cache: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def __call__(self, tokens: list[int]) -> torch.Tensor:
        missing = sorted({t for t in tokens if t not in self.cache})
        if missing:
            x = self.emb[missing].float()
            sims = (x @ self.emb.float().T) / (self.norm[missing][:, None] * self.norm[None, :])
            sims[torch.arange(len(missing)), torch.tensor(missing)] = float("-inf")  # not its own neighbour
            top = torch.topk(sims, self.k, dim=-1).indices
            for t, row in zip(missing, top):
                self.cache[t] = row
        return torch.stack([self.cache[t] for t in tokens]) if tokens else torch.empty(0, self.k, dtype=torch.long)


class Lantern(DrafterMethod):
    name = "lantern"
    title = "LANTERN relaxed acceptance (embedding neighbours), lossy"
    paper = ("Jang et al. 2025, LANTERN: Accelerating Visual Autoregressive Models with Relaxed Speculative "
             "Decoding (ICLR, arXiv:2410.03355)")
    lossless = False
    Params = LanternParams

    def __init__(self, lm, params=None, draft_lm=None):
        super().__init__(lm, params, draft_lm)
        self.neighbours = Neighbours(lm.model.get_input_embeddings().weight, self.params.k)

    def start(self, prompt, sampling) -> None:
        super().start(prompt, sampling)
        self._sampling = sampling
        self._relaxed = 0

    def propose(self, seq, sampling, generator) -> Proposal:
        L = self.params.draft_len
        logits = self.drafter.begin(seq)
        tokens: list[int] = []
        qs: list[torch.Tensor] = []
        try:
            for j in range(L):
                q = self.dist(logits, sampling)
                tokens.append(int(q.argmax()) if sampling.greedy else int(torch.multinomial(q, 1, generator=generator)))
                qs.append(q)
                if j + 1 < L:
                    logits = self.drafter.expand(list(range(-1, j)), tokens, [j])[0]
        finally:
            self.drafter.end()
        return Proposal(tokens=tokens, parents=list(range(-1, L - 1)), q=torch.stack(qs),
                        draft_forwards=self.drafter.forwards)

    def accept(self, prop, logits, sampling, generator, label) -> Outcome:
        if sampling.greedy or not prop.tokens:
            return super().accept(prop, logits, sampling, generator, label)
        nb = self.neighbours(list(prop.tokens)).to(logits.device)
        out = lantern_chain(prop.tokens, probs(logits, sampling), prop.q, nb, self.params.delta, generator)
        self._relaxed = sum(1 for i in out.path if out.decisions[i].reason.endswith("(relaxed)"))
        return out

    def observe(self, v: Verified) -> dict:
        if self._sampling.greedy or not v.proposal.tokens:
            return {}
        p0 = probs(v.logits[0], self._sampling)
        q0 = v.proposal.q[0]
        excess = torch.clamp(q0 - p0, min=0)
        top = torch.topk(excess, min(8, excess.numel()))
        mass = lantern_mass(p0, self.neighbours(top.indices.tolist()).to(p0.device), self.params.delta)
        bound = float(torch.minimum(top.values, mass).sum()) + float(excess.sum() - top.values.sum())
        return {"tv_bound": round(bound, 4), "delta": self.params.delta, "relaxed_accepts": self._relaxed}

    def describe(self) -> str:
        P = self.params
        return (f"LANTERN (LOSSY when sampling: faster, not the same distribution): k={P.k} embedding neighbours, "
                f"delta={P.delta:g}, {P.draft_len}-token drafts; {self.draft_note()}")
