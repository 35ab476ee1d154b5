"""Entropy-adaptive decoding (EAD): a small model writes while it is sure, the large one takes over when the
small model's predictions get uncertain -- LOSSY.

Simonds, "Entropy Adaptive Decoding: Dynamic Model Switching for Efficient Inference", arXiv:2502.06833
(2025). The small model's next-token entropy is tracked over a rolling window; when its mean exceeds
`threshold` (nats) the large model (the target) generates, and control returns to the small model once the
rolling entropy falls back below the threshold (after at least `min_large` large-model tokens).

Here the small model is the layer-truncated self-draft (or any LM sharing the tokenizer); it reads every token
(its entropy is the switching signal), and the large model catches up on the tokens it missed in one forward
when it takes over. Both keep their own KV cache (`labkit.drafter.TreeDrafter`, used here as a plain cached
LM). Each Step says which model produced the token, the entropy, the rolling mean and any switch; its nodes are
the producing model's top candidates. Greedy runs take the argmax, sampling runs sample from the producing
model with the run's settings. Not the target's output: the small model's tokens are not verified.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from ..sampling import probs
from ..drafter import TreeDrafter, draft_param, resolve_draft
from ..engine import Method, Pick, token_loop
from ..params import param
from ..trace import ACCEPTED, BONUS_ARGMAX, BONUS_SAMPLED, REJECTED, Timing
from .strategies import candidate_nodes, inverse_cdf


@dataclass
class EADParams:
    small: str = draft_param("the small model")
    threshold: float = param(2.0, "switch to the large model when the small model's rolling entropy (nats) "
                                  "exceeds this", lo=0.0, hi=20.0)
    window: int = param(4, "rolling-entropy window (tokens)", lo=1, hi=64)
    min_large: int = param(4, "tokens the large model writes at least once it takes over", lo=1, hi=256)
    show: int = param(5, "candidates shown per step", lo=1, hi=50)


def entropy(logits: torch.Tensor) -> float:
    logp = torch.log_softmax(logits.float(), -1)
    return float(-(logp.exp() * logp).sum())


class EntropyAdaptive(Method):
    name = "ead"
    title = "Entropy-adaptive decoding (small/large switching), lossy"
    paper = "Simonds 2025, Entropy Adaptive Decoding: Dynamic Model Switching for Efficient Inference (arXiv:2502.06833)"
    lossless = False
    kind = "strategy"
    custom_loop = True
    Params = EADParams

    def __init__(self, lm, params=None, small_lm=None):
        super().__init__(lm, params)
        self.small = TreeDrafter(small_lm if small_lm is not None else resolve_draft(lm, self.params.small))
        self.large = TreeDrafter(lm)

    def run(self, prompt, *, max_new_tokens, sampling, detail, generator, should_stop):
        self.small.reset()
        self.large.reset()
        return token_loop(self.lm, prompt, self._picks(prompt, sampling, detail, generator),
                          max_new_tokens=max_new_tokens, detail=detail, should_stop=should_stop)

    @torch.inference_mode()  # entered around each step of the generator
    def _picks(self, prompt, sampling, detail, generator):
        P, lm = self.params, self.lm
        seq = list(prompt)
        recent: deque[float] = deque(maxlen=P.window)
        active, large_run = "small", 0
        while True:
            t0 = time.perf_counter()
            small_logits = self.small.begin(seq)
            h = entropy(small_logits)
            recent.append(h)
            rolling = sum(recent) / len(recent)
            switch = ""
            if active == "small" and rolling > P.threshold:
                active, large_run, switch = "large", 0, f"small -> large: rolling entropy {rolling:.2f} > {P.threshold:g}"
            elif active == "large" and large_run >= P.min_large and rolling <= P.threshold:
                active, switch = "small", f"large -> small: rolling entropy {rolling:.2f} <= {P.threshold:g}"
            t1 = time.perf_counter()
            large_forwards = 0
            if active == "large":
                missing = len(seq) - len(self.large.fed)
                logits = self.large.begin(seq)
                large_forwards = 1
                large_run += 1
            else:
                logits, missing = small_logits, 0
            t2 = time.perf_counter()
            p = probs(logits, sampling)
            if sampling.greedy:
                tok, how, u = int(p.argmax()), BONUS_ARGMAX, None
            else:
                (tok, u), how = inverse_cdf(p, generator), BONUS_SAMPLED
            cands = torch.topk(p, min(P.show, p.numel())).indices.tolist()
            if tok not in cands:
                cands.append(tok)
            pc = p[cands].tolist()
            why = "argmax" if u is None else f"sampled u={u:.3f}"
            reasons = [f"{why} of the {active} model (p={pt:.3f})" if t == tok else
                       f"p={pt:.3f} under the {active} model" for t, pt in zip(cands, pc)]
            statuses = [ACCEPTED if t == tok else REJECTED for t in cands]
            seq.append(tok)
            t3 = time.perf_counter()
            state = {"model": active, "entropy": round(h, 4), "rolling_entropy": round(rolling, 4)}
            if switch:
                state["switch"] = switch
            if large_forwards:
                state["large_caught_up"] = missing
            yield Pick(root=seq[-2], token=tok, nodes=candidate_nodes(lm, cands, pc, statuses, reasons, detail),
                       how=how, timing=Timing(draft=t1 - t0, verify=t2 - t1, accept=t3 - t2, total=t3 - t0),
                       kv_len=len(self.large.fed), state=state, target_forwards=large_forwards, draft_forwards=1)

    def describe(self) -> str:
        P = self.params
        return (f"EAD (LOSSY: small-model tokens are not verified): small {self.small.lm.name}, switch above "
                f"{P.threshold:g} nats rolling entropy over {P.window} tokens, large for at least {P.min_large}")
