"""Adaptive draft length: keep drafting while the predicted chance that the whole draft survives is high.

SpecDec++ (Huang et al., "SpecDec++: Boosting Speculative Decoding via Adaptive Candidate Lengths",
arXiv:2405.19715, 2024) stops drafting once the predicted probability that at least one drafted token will be
rejected exceeds a threshold h; it predicts each token's acceptance with a trained head. This is SpecDec++'s
stopping rule with a training-free acceptance estimate in place of the trained head. It is NOT PEARL (Liu et al.,
arXiv:2408.11850), whose mechanism is running drafting and verification in parallel (pre-verify / post-verify);
that is not implemented in labkit.

Training-free estimate (labkit's): token j's predicted acceptance is a_j = min(1, c * q(x_j)), the draft's own
confidence in the token it drafted, times a calibration factor c. Drafting continues while the product
a_1 * ... * a_j (the chance that every token so far is accepted) stays >= `stop_below` (= 1 - h), up to
`max_len`. With `calibrate`, c is learned across rounds at run time: c = (decayed count of
accepted tokens) / (decayed sum of their raw confidences q(x)) over the positions the target tested. The stop
decision, the predictions and c (before -> after) go into Step.state.

Lossless: the decision to draft token j + 1 uses only tokens 1..j and earlier rounds, never token j + 1 itself,
so standard speculative sampling stays exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..drafter import DrafterMethod, draft_param
from ..engine import Proposal, Verified
from ..params import param


@dataclass
class AdaptiveLengthParams:
    draft: str = draft_param()
    stop_below: float = param(0.4, "stop when the predicted chance that all drafted tokens survive falls below "
                                   "this (SpecDec++'s 1 - h)", lo=0.0, hi=1.0)
    max_len: int = param(10, "longest draft", lo=1, hi=32)
    calibrate: bool = param(True, "learn the calibration factor c from verified rounds (at run time)")
    decay: float = param(0.9, "per-round decay of the calibration statistics", lo=0.0, hi=1.0)


class AdaptiveLength(DrafterMethod):
    name = "adaptive_length"
    title = "Adaptive draft length (SpecDec++'s stopping rule, training-free estimate)"
    paper = ("Huang et al. 2024, SpecDec++: Boosting Speculative Decoding via Adaptive Candidate Lengths "
             "(arXiv:2405.19715)")
    lossless = True
    Params = AdaptiveLengthParams

    def __init__(self, lm, params=None, draft_lm=None):
        super().__init__(lm, params, draft_lm)
        self.reset()

    def reset(self) -> None:
        self.seen = 0.0  # decayed sum of the raw confidences q(x) at tested positions
        self.hits = 0.0  # decayed number of accepted positions
        self.c = 1.0
        self._conf: list[float] = []

    def propose(self, seq, sampling, generator) -> Proposal:
        P = self.params
        logits = self.drafter.begin(seq)
        tokens: list[int] = []
        qs: list[torch.Tensor] = []
        pred: list[float] = []
        conf: list[float] = []
        survive = 1.0
        why = f"reached max_len={P.max_len}"
        try:
            for j in range(P.max_len):
                q = self.dist(logits, sampling)
                x = int(q.argmax()) if sampling.greedy else int(torch.multinomial(q, 1, generator=generator))
                tokens.append(x)
                qs.append(q)
                conf.append(float(q[x]))
                a = min(1.0, self.c * conf[-1])
                pred.append(a)
                survive *= a
                if survive < P.stop_below:
                    why = (f"stopped after {j + 1}: predicted all-accepted {survive:.2f} < {P.stop_below:g}")
                    break
                if j + 1 < P.max_len:
                    logits = self.drafter.expand(list(range(-1, len(tokens) - 1)), tokens, [j])[0]
        finally:
            self.drafter.end()
        self._conf = conf
        return Proposal(tokens=tokens, parents=list(range(-1, len(tokens) - 1)), q=torch.stack(qs),
                        draft_forwards=self.drafter.forwards,
                        state={"draft_len": len(tokens), "stop": why, "predicted": [round(a, 3) for a in pred],
                               "survive": round(survive, 4)})

    def observe(self, v: Verified) -> dict:
        n = len(v.proposal.tokens)
        tested = min(len(v.path) + 1, n)  # the accepted tokens plus the first rejected one
        if not self.params.calibrate or tested == 0:
            return {"calibration": round(self.c, 4)}
        d = self.params.decay
        self.seen = d * self.seen + sum(self._conf[:tested])
        self.hits = d * self.hits + len(v.path)
        before = self.c
        self.c = min(4.0, max(0.25, self.hits / self.seen)) if self.seen > 1e-9 else 1.0
        return {"calibration": round(self.c, 4), "calibration_before": round(before, 4),
                "tested": tested, "accepted": len(v.path)}

    def describe(self) -> str:
        P = self.params
        return (f"Adaptive length: stop below {P.stop_below:g} predicted survival, max {P.max_len}"
                f"{', calibrated' if P.calibrate else ''} ({self.draft_note()})")
