"""Self-speculation through a sparse KV cache: the target drafts for itself attending to a few of its own KV
entries, then verifies the draft with dense attention.

Sun et al., "TriForce: Lossless Acceleration of Long Sequence Generation with Hierarchical Speculative
Decoding" (COLM 2024, arXiv:2404.11912); Chen et al., "MagicDec: Breaking the Latency-Throughput Tradeoff for
Long Context Generation with Speculative Decoding" (ICLR 2025, arXiv:2408.11049). Lossless: the drafts are
verified by the dense target; when sampling they are drawn from the sparse model's own distribution q and
accepted by the standard rule min(1, p/q).

Each round the target itself drafts a chain of up to `draft_len` tokens through the generation's own KV cache,
with a KV-selection policy from `labkit.sparsity` applied in every layer (`policy`: StreamingLLM's sinks +
recent window, as MagicDec, or TokenSelect's per-head query-key vote, `budget` entries per head): the same
weights, a sparse view of the context. What the draft appends to the cache is cropped before the dense verify
pass. The policy runs through the sparsity capture (transformers' AttentionInterface), which also records what
the draft's first forward attended to: per layer, the share of committed KV entries it read and the share of
dense attention mass those entries hold (recall). The lab shows, for one run, the draft tree, the acceptance
decisions and the draft side's attention map together: how much the sparse draft attends to, and what that does
to acceptance.

Where it departs: TriForce retrieves KV chunks and stacks a small draft model under the sparse-KV target
(hierarchical), MagicDec targets long contexts and large batches on GPUs, where loading the KV cache is the cost
that sparsity removes. Here the draft is one level, and on a CPU with short contexts the draft costs about a full
target forward per token (the weights, not the KV cache, dominate), so it shows the mechanism, not a speed-up;
a prompt no longer than the budget leaves nothing to drop (the draft is then the dense target: every draft token
is accepted).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import Method, Proposal
from ..layers import scratch
from ..models import cache_kwargs
from ..params import param
from ..sampling import probs

POLICIES = ("streaming_llm", "token_select")


@dataclass
class SparseSelfSpecParams:
    policy: str = param("streaming_llm", "the draft's KV selection (labkit.sparsity): streaming_llm = sinks + recent "
                                         "window (MagicDec); token_select = per-head query-key vote", choices=POLICIES)
    budget: int = param(32, "committed KV entries each head of the draft reads", lo=1, hi=1 << 16)
    sinks: int = param(4, "initial tokens the draft always reads (attention sinks)", lo=0, hi=1024)
    draft_len: int = param(4, "tokens drafted per round", lo=1, hi=16)


# A long passage, so that a small KV budget leaves most of it out of the draft's view
LONG_EXAMPLE = ("Read this passage, then summarise it in three sentences. The river rises in the hills north of "
                "the town and runs south through farmland for forty kilometres before it reaches the sea. In the "
                "spring the snow melts and the river floods the low fields, which the farmers leave fallow until "
                "June. The old stone bridge in the town centre was built in 1820 and has survived every flood since; "
                "the new bridge downstream carries the railway. Fishermen work the estuary from April to October, "
                "mostly for sea trout, and the harbour also serves a small ferry to the island.")


class _RootRow:
    """The minimal Step the capture's `frame` reads: the draft's first forward, its root row only."""

    kind = "decode"
    accepted = ()

    def __init__(self, index: int):
        self.index = index


class SparseSelfSpec(Method):
    name = "sparse_self_spec"
    title = "Self-speculation through a sparse KV cache (TriForce / MagicDec style)"
    paper = ("Sun et al. 2024, TriForce: Lossless Acceleration of Long Sequence Generation with Hierarchical "
             "Speculative Decoding (arXiv:2404.11912); Chen et al. 2024, MagicDec: Breaking the Latency-Throughput "
             "Tradeoff for Long Context Generation with Speculative Decoding (arXiv:2408.11049)")
    lossless = True
    Params = SparseSelfSpecParams
    example = LONG_EXAMPLE
    state_keys = ("draft_view",)
    variants = ({"policy": "token_select"},)
    exclusive_model = True  # its drafts switch the model's attention function (the sparsity capture)

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        from .. import sparsity

        p = self.params
        extra = {"local": max(0, (p.budget - p.sinks) // 4)} if p.policy == "token_select" else {}  # TokenSelect's
        # recent window: a quarter of what the sinks leave; the rest is chosen by the vote
        self.policy = sparsity.create(p.policy, {"budget": p.budget, "sinks": min(p.sinks, p.budget - 1), **extra})
        self.rounds = 0

    @classmethod
    def supports(cls, lm) -> str | None:
        from ..sparsity.instrument import unsupported

        return unsupported(lm)

    @torch.inference_mode()
    def _forward(self, ids: list[int], pos: int) -> torch.Tensor:
        target = self.target
        dev = target.device
        out = target.model(input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([[pos]], device=dev),
                           **cache_kwargs(target.model, target.cache), use_cache=True)
        return out.logits[0, -1]

    def propose(self, seq, sampling, generator) -> Proposal:
        from .. import sparsity

        p = self.params
        target = self.target
        cache, pos = target.cache, target.kv_len
        record = sparsity.LayerHeadSelection(full_row_max=0, top_k=1) if self.detail else None
        tokens, qs, view = [], [], {}
        self.policy.reset()  # each round's draft starts from the committed cache (TokenSelect's reuse cache too)
        with sparsity.capture(self.lm, self.policy, record=record, cache_filter=lambda c: c is cache) as cap, \
                scratch(cache):
            ids = [seq[-1]]
            for j in range(p.draft_len):
                q = probs(self._forward(ids, pos), sampling)
                if j == 0 and self.detail:
                    view = _draft_view(cap.frame(_RootRow(self.rounds)), self.policy.describe())
                x = int(q.argmax()) if sampling.greedy else int(torch.multinomial(q, 1, generator=generator))
                tokens.append(x)
                qs.append(q)
                ids, pos = [x], pos + 1
        self.rounds += 1
        return Proposal(tokens=tokens, parents=list(range(-1, len(tokens) - 1)), q=torch.stack(qs),
                        draft_forwards=len(tokens), state={"draft_view": view})

    def describe(self) -> str:
        p = self.params
        return (f"Sparse self-speculation: the target drafts {p.draft_len} tokens reading {p.budget} KV entries per "
                f"head ({p.policy}), verified densely")


def _draft_view(frame, policy: str) -> dict:
    """What the draft's first forward saw, per layer: the share of the committed KV entries its heads read and the
    share of dense attention mass those held (recall)."""
    past = frame.kv_len
    kept = [round(sum(row) / (len(row) * past), 4) if past and row else 1.0 for row in frame.kv_kept]
    recall = [round(sum(r for h in lf.heads for r in h.recall) / max(1, sum(len(h.recall) for h in lf.heads)), 4)
              for lf in frame.layers]
    return {"policy": policy, "kv_len": past, "kept": kept, "recall": recall,
            "mean_recall": round(sum(recall) / len(recall), 4) if recall else None}
