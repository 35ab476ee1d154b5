"""SWIFT: self-speculative decoding by skipping layers of the target, the skip set found during decoding.

Xia et al., "SWIFT: On-the-Fly Self-Speculative Decoding for LLM Inference Acceleration"
(ICLR 2025, arXiv:2410.06916). Lossless: the draft chain is verified by the full target (min(1, p/q) with the
draft's own q when sampling).

- The draft is the target with a set of sub-layers skipped (residual stream passed through). With
  `granularity=sublayer` (the default, the paper's) the units are the attention and MLP sub-layers of every
  decoder layer, skipped separately (`skip_ratio` of the 2L sub-layers, as SWIFT counts it); with
  `granularity=layer` (the variant, labkit's earlier design) whole decoder layers. It runs the kept units
  through the target's own KV cache (`labkit.layers`): the committed prefix's keys and values at
  every kept layer are the full model's, only the draft tokens are appended, and everything appended is cropped
  before verification, so the target's cache is left exactly as it was.
- The skip set has a fixed size (`skip_ratio` of the layers) and is searched on the fly, as in SWIFT's
  optimisation phase: during the first `search_rounds` rounds of the session, each round proposes a neighbour
  (one skipped layer swapped for a kept one) and scores both sets by their matchness on the latest
  `eval_tokens` committed tokens -- one teacher-forced pass of the layer-skipped model over the context,
  counting how often its argmax equals the token that followed. The better set is kept. Afterwards the set is
  frozen; its measured acceptance in real rounds is tracked.
- Confidence-aware drafting (SWIFT's early stop): drafting stops after a token whose draft probability is
  below `stop_conf`.
Simplifications: SWIFT mixes random search with Bayesian optimisation and verifies a small top-k tree; here
the search is a random local search and the draft is a chain. A skipped sub-layer is swapped out of the shared
model for the draft's call (`layers.LayerStack.run`), so sub-layer runs hold the model's gate alone.

Trace: the current skip set, its measured acceptance, and during the search the candidate set and both
matchness scores.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..sampling import probs
from ..engine import Method, Proposal, Verified, check_supported
from ..layers import LayerStack, scratch
from ..params import param


@dataclass
class SwiftParams:
    skip_ratio: float = param(0.2, "fraction of the units (sub-layers or layers) skipped by the draft (SWIFT uses "
                                   "~0.45 of the sub-layers on 7B+ models; a 135M model tolerates less)",
                              lo=0.0, hi=0.9)
    granularity: str = param("sublayer", "what is skipped: sublayer = attention and MLP separately (SWIFT's); "
                                         "layer = whole decoder layers", choices=("sublayer", "layer"))
    draft_len: int = param(4, "most tokens drafted per round", lo=1, hi=32)
    stop_conf: float = param(0.5, "stop drafting after a token whose draft probability is below this", lo=0.0, hi=1.0)
    search_rounds: int = param(12, "rounds (per session) that each try one neighbouring skip set", lo=0, hi=1000)
    eval_tokens: int = param(12, "committed tokens a skip set is scored on (teacher-forced matchness)", lo=1, hi=256)
    seed: int = param(0, "seed of the skip-set search", lo=0)


def initial_skip(n_units: int, k: int) -> frozenset[int]:
    """A contiguous block of k units in the middle (the middle layers are usually the most redundant)."""
    lo = max(0, min(n_units - k, n_units // 2 - k // 2))
    return frozenset(range(lo, lo + k))


class Swift(Method):
    name = "swift"
    # what every decode round's Step.state carries (views.method_state draws them; a test checks each round)
    state_keys = ('skip', 'skipped', 'phase')
    title = "SWIFT (self-speculation by layer skipping)"
    paper = ("Xia et al. 2024, SWIFT: On-the-Fly Self-Speculative Decoding for LLM Inference Acceleration "
             "(arXiv:2410.06916, ICLR 2025)")
    lossless = True
    Params = SwiftParams
    variants = ({"granularity": "layer"},)

    @classmethod
    def supports(cls, lm) -> str | None:
        if lm.config.num_hidden_layers < 2:
            return "it needs at least two decoder layers to skip one"
        return LayerStack.unsupported(lm)

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        check_supported(self, lm)
        self.stack = LayerStack(lm)
        self.sublayer = self.params.granularity == "sublayer"
        self.exclusive_model = self.sublayer  # sub-layers are swapped out of the shared model while drafting
        self.per_layer = 2 if self.sublayer else 1
        self.n_units = self.per_layer * self.stack.n_layers
        self.k = min(self.n_units - 1, max(1, round(self.params.skip_ratio * self.n_units)))
        self.reset()

    def reset(self) -> None:
        self.skip = initial_skip(self.n_units, self.k)
        self.rng = random.Random(self.params.seed)
        self.searched = 0
        self.best_match: float | None = None
        self.tested = self.accepted = 0

    def _neighbour(self) -> frozenset[int]:
        n, u = self.stack.n_layers, self.per_layer
        # keep the first and last layer when there is a choice
        movable = range(u, u * (n - 1)) if n >= 4 else range(self.n_units)
        out_ = [i for i in movable if i in self.skip]
        in_ = [i for i in movable if i not in self.skip]
        if not out_ or not in_:
            return self.skip
        return (self.skip - {self.rng.choice(out_)}) | {self.rng.choice(in_)}

    def _plan(self, skip: frozenset[int]) -> dict:
        """The stack.run arguments that skip these units: whole layers left out, or sub-layers passed by."""
        n = self.stack.n_layers
        if not self.sublayer:
            return {"layers": [i for i in range(n) if i not in skip]}
        return {"layers": list(range(n)), "skip_attention": frozenset(x // 2 for x in skip if x % 2 == 0),
                "skip_mlp": frozenset(x // 2 for x in skip if x % 2 == 1)}

    def matchness(self, seq: list[int], skip: frozenset[int]) -> float:
        """Share of the last `eval_tokens` committed tokens that the layer-skipped model predicts (argmax),
        teacher-forced in one pass over the context through the target's cache (left unchanged)."""
        kv = self.target.kv_len
        m = min(self.params.eval_tokens, kv)
        with scratch(self.target.cache):
            h = self.stack.run(self.target.cache, seq[kv - m:kv], kv - m, **self._plan(skip))
            pred = self.stack.logits(h[0]).argmax(-1)
        want = torch.tensor(seq[kv - m + 1:kv + 1], device=pred.device)
        return float((pred == want).float().mean())

    @torch.inference_mode()
    def propose(self, seq, sampling, generator) -> Proposal:
        p = self.params
        state: dict = {}
        if self.searched < p.search_rounds and self.target.kv_len >= 1:
            cand = self._neighbour()
            if cand != self.skip:
                best, score = self.matchness(seq, self.skip), self.matchness(seq, cand)
                adopted = score > best
                if adopted:
                    self.skip, self.tested, self.accepted = cand, 0, 0
                self.best_match = max(best, score)
                state["search"] = {"candidate": sorted(cand), "candidate_match": round(score, 3),
                                   "current_match": round(best, 3), "adopted": adopted}
            self.searched += 1
        plan = self._plan(self.skip)
        cache, pos = self.target.cache, self.target.kv_len
        tokens, qs = [], []
        ids = [seq[-1]]
        with scratch(cache):
            for _ in range(p.draft_len):
                h = self.stack.run(cache, ids, pos, **plan)
                q = probs(self.stack.logits(h[0, -1]), sampling)
                x = int(q.argmax()) if sampling.greedy else int(torch.multinomial(q, 1, generator=generator))
                tokens.append(x)
                qs.append(q)
                if float(q.max()) < p.stop_conf:
                    break
                ids, pos = [x], pos + 1
        state.update({"skip": sorted(self.skip), "skipped": len(self.skip), "layers": self.stack.n_layers,
                      "granularity": self.params.granularity, "units": self.n_units,
                      "phase": "search" if "search" in state else "frozen"})
        return Proposal(tokens=tokens, parents=list(range(-1, len(tokens) - 1)), q=torch.stack(qs),
                        draft_forwards=len(tokens), state=state)

    def observe(self, v: Verified) -> dict:
        n = len(v.proposal.tokens)
        self.tested += len(v.path) + (1 if len(v.path) < n else 0)
        self.accepted += len(v.path)
        return {"skip_acceptance": round(self.accepted / self.tested, 3) if self.tested else None,
                "skip_tested": self.tested}

    def describe(self) -> str:
        what = (f"{self.k} of {self.n_units} sub-layers (attention and MLP separately)" if self.sublayer
                else f"{self.k} of {self.stack.n_layers} layers (labkit's whole-layer variant)")
        return f"SWIFT: the target minus {what}, searched on the fly, up to {self.params.draft_len} draft tokens"
