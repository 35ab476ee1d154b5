"""SpecTr: k i.i.d. draft sequences, verified level by level with the k-sequential selection rule (K-SEQ).

Sun et al., "SpecTr: Fast Speculative Decoding via Optimal Transport", NeurIPS 2023 (arXiv:2310.15141). The
draft LM samples k sequences of `draft_len` tokens independently (with replacement: sequences may share
prefixes or repeat). The target scores all k * draft_len tokens in one forward (each sequence is its own chain
in the tree, as the paper's batch of k). At each depth, K-SEQ (`accept.kseq`) picks at most one token among
the sequences still agreeing with what was accepted so far: with rho* the smallest valid division factor, it
tries the draws in order, accepting x with probability min(1, p(x) / (rho* q(x))), and samples from the K-SEQ
residual if all fail. This preserves p exactly and accepts at least as often as a single draft
(1 - (1 - beta(rho*))^k >= sum_x min(p, q)).

Greedy mode: sequence i starts with the draft's rank-i token and continues greedily (a deterministic stand-in
for k samples); the target keeps the longest match.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..accept import Outcome, greedy_tree, spectr_tree
from ..sampling import probs
from ..drafter import DrafterMethod, draft_param
from ..engine import Proposal
from ..params import param


@dataclass
class SpecTrParams:
    draft: str = draft_param()
    k: int = param(3, "draft sequences per round", lo=1, hi=16)
    draft_len: int = param(4, "tokens per draft sequence", lo=1, hi=16)


@dataclass
class SpecTrProposal(Proposal):
    k: int = 1  # node (d - 1) * k + s is sequence s's token at depth d


class SpecTr(DrafterMethod):
    name = "spectr"
    title = "SpecTr: k draft sequences, k-sequential selection"
    paper = "Sun et al. 2023, SpecTr: Fast Speculative Decoding via Optimal Transport (NeurIPS, arXiv:2310.15141)"
    lossless = True
    Params = SpecTrParams

    def propose(self, seq, sampling, generator) -> Proposal:
        k, L = self.params.k, self.params.draft_len
        q = self.dist(self.drafter.begin(seq), sampling)
        tokens: list[int] = []
        parents: list[int] = []
        qs: list[torch.Tensor] = []
        try:
            if sampling.greedy:
                first = torch.topk(q, min(k, q.numel())).indices.tolist()
                k = len(first)
            else:
                first = torch.multinomial(q, k, replacement=True, generator=generator).tolist()
            level_q = [q] * k
            xs = first
            for d in range(L):
                base = len(tokens)
                for s in range(k):
                    tokens.append(xs[s])
                    parents.append(-1 if d == 0 else base - k + s)
                    qs.append(level_q[s])
                if d + 1 == L:
                    break
                logits = self.drafter.expand(parents, tokens, list(range(base, base + k)))
                level_q = [self.dist(lg, sampling) for lg in logits]
                if sampling.greedy:
                    xs = [int(qq.argmax()) for qq in level_q]
                else:
                    xs = [int(torch.multinomial(qq, 1, generator=generator)) for qq in level_q]
        finally:
            self.drafter.end()
        return SpecTrProposal(tokens=tokens, parents=parents, q=torch.stack(qs), draft_forwards=self.drafter.forwards,
                              state={"k": k, "distinct_first_tokens": len(set(tokens[:k]))}, k=k)

    def accept(self, prop, logits, sampling, generator, label) -> Outcome:
        if sampling.greedy:
            return greedy_tree(prop.parents, prop.tokens, logits.argmax(-1).tolist(), label)
        return spectr_tree(prop.parents, prop.tokens, prop.k, probs(logits, sampling), prop.q, generator)

    def describe(self) -> str:
        return f"SpecTr: {self.params.k} sequences x {self.params.draft_len} tokens, K-SEQ ({self.draft_note()})"
