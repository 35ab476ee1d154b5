"""Contrastive search: pick, among the top-k tokens, the one that is likely AND unlike the context.

Su et al., "A Contrastive Framework for Neural Text Generation", NeurIPS 2022 (arXiv:2202.06417). At each step
the k most likely tokens v are each fed to the model; with h_v the last-layer hidden state at v and h_j those
of every earlier token (prompt included),

    score(v) = (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j)

and the best-scoring v is committed (the degeneration penalty max_j cos punishes repeating the context). The
k candidates go through the model in ONE forward as k siblings of a tree (4D mask); the chosen one's KV entry
is kept and its logits give the next step's candidates, so each token costs one forward, as in transformers'
former implementation (`penalty_alpha`, `top_k`).

`lossless = False`: a different decoding objective, not a faster way to the same tokens. Greedy/sampling
settings of the run are not used (contrastive search is deterministic).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import tree
from ..drafter import slot_mask
from ..engine import Method, Pick, token_loop
from ..models import cache_kwargs
from ..params import param
from ..trace import ACCEPTED, REJECTED, Node, Timing


@dataclass
class ContrastiveParams:
    alpha: float = param(0.6, "degeneration penalty weight (penalty_alpha)", lo=0.0, hi=1.0)
    k: int = param(4, "candidates considered per step (top_k)", lo=1, hi=20)


def keep_slot(cache, start: int, j: int, n: int) -> None:
    """Of the n cache entries from `start`, keep entry j (moved to `start`) and drop the rest."""
    if j:
        for layer in cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            layer.keys[..., start, :] = layer.keys[..., start + j, :]
            layer.values[..., start, :] = layer.values[..., start + j, :]
    if n > 1:
        cache.crop(-(n - 1))


class ContrastiveSearch(Method):
    name = "contrastive"
    title = "Contrastive search"
    paper = "Su et al. 2022, A Contrastive Framework for Neural Text Generation (NeurIPS, arXiv:2202.06417)"
    lossless = False  # a different decoding objective
    kind = "strategy"
    custom_loop = True
    Params = ContrastiveParams

    def _forward(self, cache, ids: list[int], positions: list[int], mask):
        dev = self.lm.device
        kw = dict(input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([positions], device=dev),
                  **cache_kwargs(self.lm.model, cache), use_cache=True, output_hidden_states=True)
        if mask is not None:
            kw["attention_mask"] = mask
        out = self.lm.model(**kw)
        return out.logits[0].float(), out.hidden_states[-1][0].float()

    def run(self, prompt, *, max_new_tokens, sampling, detail, generator, should_stop):
        return token_loop(self.lm, prompt, self._picks(prompt, detail), max_new_tokens=max_new_tokens,
                          detail=detail, should_stop=should_stop)

    @torch.inference_mode()  # entered around each step of the generator
    def _picks(self, prompt, detail):
        from transformers import DynamicCache

        lm, P = self.lm, self.params
        cache = DynamicCache()
        window = tree.sliding_window(lm.config)
        label = (lambda t: lm.token_texts([t])[0]) if detail else str
        t0 = time.perf_counter()
        logits, hidden = self._forward(cache, list(prompt), list(range(len(prompt))), None)
        logits, context = logits[-1], hidden / hidden.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        kv, root, forwards = len(prompt), prompt[-1], 1
        seq = list(prompt)  # the tokens whose hidden states are in `context`
        while True:
            probs = torch.softmax(logits, dim=-1)
            top_p, top_ids = torch.topk(probs, P.k)
            k = top_ids.numel()
            allowed = torch.zeros(k, kv + k, dtype=torch.bool)
            allowed[:, :kv] = True
            allowed[:, kv:] = torch.eye(k, dtype=torch.bool)
            pos = torch.full((k,), kv)
            mask = slot_mask(allowed, pos, torch.cat([torch.arange(kv), pos]), dtype=lm.dtype, device=lm.device,
                             window=window)
            cand_logits, cand_h = self._forward(cache, top_ids.tolist(), [kv] * k, mask)
            forwards += 1
            t1 = time.perf_counter()
            cand_n = cand_h / cand_h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            sims = cand_n @ context.T  # [k, context]
            penalty, nearest = sims.max(dim=-1)
            score = (1.0 - P.alpha) * top_p - P.alpha * penalty
            j = int(score.argmax())
            tok = int(top_ids[j])
            keep_slot(cache, kv, j, k)
            kv += 1
            seq.append(tok)
            context = torch.cat([context, cand_n[j:j + 1]])
            logits = cand_logits[j]
            t2 = time.perf_counter()
            nodes = []
            ids, ps, pens, sc = top_ids.tolist(), top_p.tolist(), penalty.tolist(), score.tolist()
            for i in range(k):
                why = (f"score {sc[i]:.3f} = {1 - P.alpha:.2f}*p {ps[i]:.3f} - {P.alpha:.2f}*max cos {pens[i]:.3f}")
                if detail:
                    near = int(nearest[i])
                    why += f" (most similar to {label(seq[near])!r} at position {near})"
                status = ACCEPTED if i == j else REJECTED
                why = f"{why}: best" if i == j else f"{why}: lower than {sc[j]:.3f}"
                nodes.append(Node(token=ids[i], parent=-1, depth=1, status=status,
                                  text=lm.token_texts([ids[i]])[0] if detail else "",
                                  target_prob=ps[i] if detail else None, reason=why if detail else ""))
            t3 = time.perf_counter()
            yield Pick(root=root, token=tok, nodes=nodes, how="contrastive score", kv_len=kv,
                       timing=Timing(verify=t1 - t0, accept=t2 - t1, total=t3 - t0), target_forwards=forwards,
                       state={"penalty": round(pens[j], 4), "p": round(ps[j], 4), "alpha": P.alpha})
            t0, root, forwards = time.perf_counter(), tok, 0

    def describe(self) -> str:
        return f"Contrastive search: alpha={self.params.alpha:g}, top-{self.params.k} candidates (deterministic)"
