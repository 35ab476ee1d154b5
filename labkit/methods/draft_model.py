"""Draft-model speculative sampling: a smaller LM sharing the tokenizer drafts a chain, the target verifies.

Leviathan et al., "Fast Inference from Transformers via Speculative Decoding" (ICML 2023) and Chen et al.,
"Accelerating Large Language Model Decoding with Speculative Sampling" (2023). Lossless: accept x with
probability min(1, p(x)/q(x)), otherwise resample from norm(max(0, p - q)).

Offline, only the embedded models exist, so the default draft is the target's own first N layers
(plus its final norm and LM head): a layer-truncated copy that shares the target's weights. It is a weak
drafter; the UI says so. Pass `draft=<hub id, path or embedded name>` for a real small model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling import probs
from ..drafter import draft_param, resolve_draft, same_tokenizer
from ..engine import Method, Proposal
from ..models import LM, cache_kwargs
from ..params import param


@dataclass
class DraftModelParams:
    draft: str = draft_param()
    draft_len: int = param(4, "tokens drafted per round", lo=1, hi=32)


class DraftModel(Method):
    name = "draft_model"
    title = "Draft-model speculative sampling"
    paper = ("Leviathan et al. 2023, Fast Inference from Transformers via Speculative Decoding (ICML); "
             "Chen et al. 2023, Accelerating LLM Decoding with Speculative Sampling (arXiv:2302.01318)")
    lossless = True
    Params = DraftModelParams

    def __init__(self, lm: LM, params=None, draft_lm: LM | None = None):
        super().__init__(lm, params)
        spec = self.params.draft
        self.draft = resolve_draft(lm, spec) if draft_lm is None else same_tokenizer(lm, draft_lm, spec)
        self._fresh_cache()

    def _fresh_cache(self) -> None:
        from ..backends import new_cache

        self.cache = new_cache(self.draft.model)
        self.fed: list[int] = []

    def start(self, prompt, sampling) -> None:
        self._fresh_cache()

    @torch.inference_mode()
    def _feed(self, ids: list[int]) -> torch.Tensor:
        start = len(self.fed)
        dev = self.draft.device
        out = self.draft.model(input_ids=torch.tensor([ids], device=dev),
                               position_ids=torch.arange(start, start + len(ids), device=dev)[None],
                               **cache_kwargs(self.draft.model, self.cache), use_cache=True)
        self.fed.extend(ids)
        return out.logits[0, -1]

    def propose(self, seq, sampling, generator) -> Proposal:
        # roll the draft cache back to the longest prefix it shares with the committed sequence
        common = 0
        for a, b in zip(self.fed, seq):
            if a != b:
                break
            common += 1
        common = min(common, len(seq) - 1)
        if common < len(self.fed):
            self.cache.crop(common - len(self.fed))
            del self.fed[common:]
        logits = self._feed(seq[common:])
        tokens, qs = [], []
        for j in range(self.params.draft_len):
            q = probs(logits, sampling).to(self.lm.device)
            x = int(q.argmax()) if sampling.greedy else int(torch.multinomial(q, 1, generator=generator))
            tokens.append(x)
            qs.append(q)
            if j + 1 < self.params.draft_len:
                logits = self._feed([x])
        return Proposal(tokens=tokens, parents=list(range(-1, len(tokens) - 1)), q=torch.stack(qs),
                        draft_forwards=self.params.draft_len)

    def describe(self) -> str:
        note = " -- a weak self-draft: no separate draft model is available offline" if self.draft.source.startswith("layer") else ""
        return f"Draft model: {self.draft.name}, {self.params.draft_len} tokens per round{note}"
