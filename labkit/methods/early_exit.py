"""Early-exit self-drafting: draft from an intermediate layer through the final norm and LM head, with the exit
layer and the draft length chosen from the acceptance observed per layer.

Entezari Zarch et al., "DEL: Context-Aware Dynamic Exit Layer for Efficient Self-Speculative Decoding" (2025,
arXiv:2504.05598) -- per-layer acceptance tracking and the tokens-per-layer choice of exit and length;
Liu et al., "Kangaroo: Lossless Self-Speculative Decoding via Double Early Exiting" (NeurIPS 2024,
arXiv:2404.18911) -- a shallow sub-network of the target as the drafter, and a second early exit that stops
drafting when the draft is unsure. Lossless: the chain is verified by the full target (min(1, p/q) with the
draft's own q when sampling).

- Candidate exits: `exits` layers spread evenly from `min_exit` of the depth to the last-but-one layer. The draft
  runs the target's first e layers through the target's own KV cache (`labkit.layers`), then the final norm and
  LM head; what it appends to the cache is cropped before verification.
- Per-layer acceptance alpha(e): real acceptance of the tokens drafted at exit e, plus DEL-style "shadow"
  predictions: while the root goes through the layers on its way to the chosen exit, its hidden state at every
  shallower candidate exit is kept, and after verification each is scored on whether its argmax equals the
  token the target committed. Counts decay by `decay` per round so the estimates follow the context, and are
  shrunk towards a prior e / L with `prior` pseudo-counts.
- Each round picks (exit e, length g) maximising DEL's tokens per layer,
      TPL = E[tokens per round] / cost = ((1 - a^(g+1)) / (1 - a)) / (g * (e + H) + L + H),
  with a = alpha(e) plus a UCB exploration bonus (`explore`) for exits with few observations; H is the LM head's
  cost in layers (8 for SmolLM2: its 49k-word head is why early exit is dear for small models).
- Kangaroo's second exit: drafting stops after a token whose draft probability is below `stop_conf`.
Not implemented: Kangaroo's trained adapter and LayerSkip's early-exit training (this drafter is training-free,
so a model not trained for early exit gives low acceptance), and reuse of the draft's KV in verification.

Trace: the candidate exits, per-layer acceptance estimates, the chosen exit and length with its TPL (and
`est_speedup`: TPL relative to autoregressive decoding's 1 / (L + H) under this layer-count cost model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..sampling import probs
from ..engine import Method, Proposal, Verified, check_supported
from ..layers import LayerStack, scratch
from ..params import param


@dataclass
class EarlyExitParams:
    exits: int = param(4, "candidate exit layers, spread evenly from min_exit to the last-but-one layer", lo=1, hi=64)
    min_exit: float = param(0.5, "shallowest candidate exit, as a fraction of the layers", lo=0.0, hi=1.0)
    max_len: int = param(4, "longest draft per round", lo=1, hi=32)
    stop_conf: float = param(0.5, "stop drafting after a token whose draft probability is below this", lo=0.0, hi=1.0)
    explore: float = param(0.3, "UCB exploration bonus on a layer's acceptance estimate", lo=0.0, hi=5.0)
    prior: float = param(2.0, "pseudo-counts of the prior acceptance e / L per exit", lo=0.0, hi=100.0)
    decay: float = param(0.95, "per-round decay of the acceptance counts (1 = never forget)", lo=0.0, hi=1.0)


def candidate_exits(n_layers: int, count: int, min_frac: float) -> list[int]:
    """Exit e = run layers 0 .. e-1. Evenly spaced in [max(1, ceil(min_frac * L)), L - 1]."""
    hi = n_layers - 1
    lo = min(hi, max(1, math.ceil(min_frac * n_layers)))
    if count == 1 or lo == hi:
        return [hi]
    return sorted({round(lo + (hi - lo) * i / (count - 1)) for i in range(count)})


def expected_tokens(alpha: float, length: int) -> float:
    """Tokens per round for a chain of `length` with per-token acceptance alpha (the bonus included)."""
    alpha = min(max(alpha, 0.0), 0.999)
    return (1 - alpha ** (length + 1)) / (1 - alpha)


class EarlyExit(Method):
    name = "early_exit"
    title = "Early-exit self-draft (DEL / Kangaroo style)"
    paper = ("Entezari Zarch et al. 2025, DEL: Context-Aware Dynamic Exit Layer for Efficient Self-Speculative Decoding "
             "(arXiv:2504.05598); Liu et al. 2024, Kangaroo: Lossless Self-Speculative Decoding via Double "
             "Early Exiting (arXiv:2404.18911)")
    lossless = True
    Params = EarlyExitParams

    @classmethod
    def supports(cls, lm) -> str | None:
        if lm.config.num_hidden_layers < 2:
            return "it needs at least two decoder layers to exit before the last"
        return LayerStack.unsupported(lm)

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        check_supported(self, lm)
        self.stack = LayerStack(lm)
        self.exits = candidate_exits(self.stack.n_layers, self.params.exits, self.params.min_exit)
        self.head = self.stack.head_cost()
        self.reset()

    def reset(self) -> None:
        self.hits = {e: 0.0 for e in self.exits}  # accepted drafts + shadow hits, decayed
        self.trials = {e: 0.0 for e in self.exits}
        self._shadow: dict[int, torch.Tensor] = {}
        self._exit = self.exits[-1]

    def alpha(self, e: int) -> float:
        prior = self.params.prior
        return (self.hits[e] + prior * e / self.stack.n_layers) / (self.trials[e] + prior) if self.trials[e] + prior else 0.0

    def choose(self) -> tuple[int, int, float]:
        """(exit, length, TPL) maximising tokens per layer under optimistic (UCB) acceptance estimates."""
        p, L = self.params, self.stack.n_layers
        total = sum(self.trials.values())
        best = (self.exits[-1], 1, -1.0)
        for e in self.exits:
            a = min(0.999, self.alpha(e) + p.explore * math.sqrt(math.log(1 + total) / (1 + self.trials[e])))
            for g in range(1, p.max_len + 1):
                tpl = expected_tokens(a, g) / (g * (e + self.head) + L + self.head)
                if tpl > best[2]:
                    best = (e, g, tpl)
        return best

    @torch.inference_mode()
    def propose(self, seq, sampling, generator) -> Proposal:
        p = self.params
        e, g, tpl = self.choose()
        self._exit = e
        cache, pos = self.target.cache, self.target.kv_len
        tokens, qs = [], []
        self._shadow = {}
        with scratch(cache):
            # the root runs segment by segment so its hidden state at each shallower exit can be scored later
            h, done = None, 0
            for c in [x for x in self.exits if x < e] + [e]:
                h = self.stack.run(cache, [seq[-1]], pos, range(done, c), hidden=h)
                done = c
                if c < e:
                    self._shadow[c] = h[0, -1]
            for _ in range(g):
                q = probs(self.stack.logits(h[0, -1]), sampling)
                x = int(q.argmax()) if sampling.greedy else int(torch.multinomial(q, 1, generator=generator))
                tokens.append(x)
                qs.append(q)
                if len(tokens) == g or float(q.max()) < p.stop_conf:
                    break
                pos += 1
                h = self.stack.run(cache, [x], pos, range(e))
        L = self.stack.n_layers
        return Proposal(tokens=tokens, parents=list(range(-1, len(tokens) - 1)), q=torch.stack(qs),
                        draft_forwards=len(tokens),
                        state={"exit": e, "planned_len": g, "tpl": round(tpl, 5),
                               "est_speedup": round(tpl * (L + self.head), 3), "exits": self.exits})

    @torch.inference_mode()
    def observe(self, v: Verified) -> dict:
        d = self.params.decay
        for c in self.exits:
            self.hits[c] *= d
            self.trials[c] *= d
        n, e = len(v.proposal.tokens), self._exit
        self.trials[e] += len(v.path) + (1 if len(v.path) < n else 0)
        self.hits[e] += len(v.path)
        first = v.proposal.tokens[v.path[0]] if v.path else v.bonus
        shadow = {}
        for c, h in self._shadow.items():
            hit = int(self.stack.logits(h).argmax()) == first
            self.trials[c] += 1
            self.hits[c] += hit
            shadow[str(c)] = hit
        return {"alpha": {str(c): round(self.alpha(c), 3) for c in self.exits}, "shadow_hits": shadow}

    def describe(self) -> str:
        return (f"Early exit: draft from one of layers {self.exits} of {self.stack.n_layers} (chosen by tokens per "
                f"layer), up to {self.params.max_len} tokens")
