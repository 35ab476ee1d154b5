"""Diverse beam search: beam search in groups that penalise repeating each other's choices.

Vijayakumar et al., "Diverse Beam Search: Decoding Diverse Solutions from Neural Sequence Models", AAAI 2018
(arXiv:1610.02424). The `beams` beams are split into `groups` groups of equal size. Every step, the groups
extend their beams one after another; group g's log-probabilities are lowered by `diversity` times the number
of times each token was already chosen at this step by groups 0..g-1 (Hamming diversity), and each group keeps
its best continuations by cumulative (penalised) score, as transformers' former group beam search did. A beam
that emits EOS becomes a finished hypothesis scored sum / length^length_penalty; a group is done once it has
as many finished hypotheses as beams (early stopping). The answer is the best hypothesis over all groups. One
batched forward over all beams per step; groups=1 and diversity=0 is plain beam search.

Steps are emitted once the search is over (the winner is only known then): one per token of the best
hypothesis, whose nodes are the tokens all beams chose at that step -- `accepted` for the one on the winner's
lineage, `rejected` for the others, with group, beam and score.

`lossless = False`: a different decoding objective (approximately the most likely sequence, diversified), not
a faster way to the baseline's tokens. The run's sampling settings are not used.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..engine import Method, Pick, token_loop
from ..models import cache_kwargs
from ..params import ParamError, param
from ..trace import ACCEPTED, REJECTED, Node, Timing


@dataclass
class DiverseBeamParams:
    beams: int = param(4, "total beams", lo=1, hi=32)
    groups: int = param(2, "beam groups (beams must be a multiple of groups)", lo=1, hi=32)
    diversity: float = param(0.5, "penalty per earlier group's choice of the same token at the same step",
                             lo=0.0, hi=100.0)
    length_penalty: float = param(1.0, "finished hypotheses are scored sum(log p) / length^length_penalty",
                                  lo=-5.0, hi=5.0)


@dataclass
class _Choice:
    src: int  # the beam (index at the previous step) it extends
    token: int
    group: int
    score: float  # cumulative penalised score
    penalty: float  # diversity penalty applied to this token at this step
    finished: bool = False


def diverse_beam_search(model, prompt: list[int], *, beams: int, groups: int, diversity: float,
                        length_penalty: float, max_new_tokens: int, eos: frozenset[int], should_stop=None):
    """Returns (best tokens, per-step lists of _Choice, index of the best's choice at each step, per-step
    forward seconds)."""
    from transformers import DynamicCache

    if beams % groups:
        raise ParamError(f"beams ({beams}) must be a multiple of groups ({groups})")
    g = beams // groups
    dev = next(model.parameters()).device
    cache = DynamicCache()
    t0 = time.perf_counter()
    out = model(input_ids=torch.tensor([prompt], device=dev), **cache_kwargs(model, cache), use_cache=True)
    logp = torch.log_softmax(out.logits[0, -1].float(), -1)[None].repeat(beams, 1)
    cache.batch_repeat_interleave(beams)
    seconds = [time.perf_counter() - t0]
    V = logp.shape[-1]
    scores = torch.full((beams,), -1e9, device=dev)
    scores[::g] = 0.0  # only the first beam of each group starts
    history: list[list[_Choice]] = []
    finished: list[tuple[float, int, int]] = []  # (normalised score, step, index in history[step])
    n_done = [0] * groups
    for t in range(max_new_tokens):
        step: list[_Choice] = []
        src, toks, new_scores = [], [], []
        chosen: list[int] = []
        for gi in range(groups):
            rows = list(range(gi * g, (gi + 1) * g))
            pen = torch.zeros(V, device=dev)
            if diversity and chosen:
                pen = diversity * torch.bincount(torch.tensor(chosen, device=dev), minlength=V).float()
            total = (logp[rows] - pen + scores[rows, None]).view(-1)
            top = torch.topk(total, min(2 * g, total.numel()))
            kept = 0
            for rank, (val, flat) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                b, x = rows[flat // V], flat % V
                c = _Choice(b, x, gi, val, float(pen[x]))
                if x in eos:
                    if rank < g and n_done[gi] < g:
                        c.finished = True
                        step.append(c)
                        finished.append((val / (len(history) + 1) ** length_penalty, t, len(step) - 1))
                        n_done[gi] += 1
                    continue
                step.append(c)
                src.append(b)
                toks.append(x)
                new_scores.append(val)
                chosen.append(x)
                kept += 1
                if kept == g:
                    break
        history.append(step)
        stop = all(d >= g for d in n_done) or t + 1 == max_new_tokens or (should_stop is not None and should_stop())
        if stop:
            break
        t0 = time.perf_counter()
        cache.reorder_cache(torch.tensor(src, device=dev))
        scores = torch.tensor(new_scores, device=dev)
        pos = len(prompt) + t
        out = model(input_ids=torch.tensor(toks, device=dev)[:, None], **cache_kwargs(model, cache), use_cache=True,
                    position_ids=torch.full((beams, 1), pos, device=dev))
        logp = torch.log_softmax(out.logits[:, -1].float(), -1)
        seconds.append(time.perf_counter() - t0)
    # running beams at the last step count as hypotheses too (in groups that are not done yet)
    last = len(history) - 1
    for i, c in enumerate(history[last]):
        if not c.finished and n_done[c.group] < g:
            finished.append((c.score / (last + 1) ** length_penalty, last, i))
    _, t_end, i_end = max(finished, key=lambda f: f[0])
    lineage = [0] * (t_end + 1)
    i = i_end
    for t in range(t_end, -1, -1):
        lineage[t] = i
        if t:
            beam = history[t][i].src  # index among the non-finished choices of step t - 1
            i = [j for j, c in enumerate(history[t - 1]) if not c.finished][beam]
    tokens = [history[t][lineage[t]].token for t in range(t_end + 1)]
    return tokens, history[:t_end + 1], lineage, seconds


class DiverseBeamSearch(Method):
    name = "diverse_beam"
    title = "Diverse beam search"
    paper = ("Vijayakumar et al. 2018, Diverse Beam Search: Decoding Diverse Solutions from Neural Sequence Models "
             "(AAAI, arXiv:1610.02424)")
    lossless = False  # a different decoding objective
    kind = "strategy"
    custom_loop = True
    Params = DiverseBeamParams

    @torch.inference_mode()
    def run(self, prompt, *, max_new_tokens, sampling, detail, generator, should_stop):
        P, lm = self.params, self.lm
        t0 = time.perf_counter()
        tokens, history, lineage, seconds = diverse_beam_search(
            lm.model, list(prompt), beams=P.beams, groups=P.groups, diversity=P.diversity,
            length_penalty=P.length_penalty, max_new_tokens=max_new_tokens, eos=lm.eos_ids, should_stop=should_stop)
        total = time.perf_counter() - t0
        # the search already honoured should_stop: the loop replays its tokens, a Step each
        return token_loop(lm, prompt, self._picks(prompt, tokens, history, lineage, seconds, total, detail),
                          max_new_tokens=max_new_tokens, detail=detail, should_stop=None)

    def _picks(self, prompt, tokens, history, lineage, seconds, total, detail):
        P, lm = self.params, self.lm
        label = (lambda t: lm.token_texts([t])[0]) if detail else str
        g = P.beams // P.groups
        root = prompt[-1]
        for t, tok in enumerate(tokens):
            nodes = []
            for i, c in enumerate(history[t]):
                beam = f"group {c.group} beam {i}" if not c.finished else f"group {c.group}, finished hypothesis"
                why = f"{beam}: score {c.score:.2f}" + (f" (diversity penalty {c.penalty:.2f})" if c.penalty else "")
                on = i == lineage[t]
                nodes.append(Node(token=c.token, parent=-1, depth=1, status=ACCEPTED if on else REJECTED,
                                  text=label(c.token) if detail else "",
                                  reason=(why + (": on the best final hypothesis" if on else ": not on the best "
                                                 "final hypothesis")) if detail else ""))
            yield Pick(root=root, token=tok, nodes=nodes, how="beam search", kv_len=len(prompt) + t,
                       timing=Timing(verify=seconds[t] if t < len(seconds) else 0.0, total=total / len(tokens)),
                       state={"beams": P.beams, "groups": P.groups, "group_size": g,
                              "winner_group": history[t][lineage[t]].group})
            root = tok

    def describe(self) -> str:
        P = self.params
        return (f"Diverse beam search: {P.beams} beams in {P.groups} groups, diversity {P.diversity:g}, "
                f"length penalty {P.length_penalty:g} (deterministic)")
