"""Non-speculative decoding strategies, one token per Step, for side-by-side views.

Each Step's `nodes` are the candidates the strategy considered (the top few tokens, depth 1 under the root):
the chosen one `accepted` with the reason it won, the others `rejected` (filtered out / lower score) or
`not_reached` (kept, but the draw fell elsewhere). The chosen token is the Step's bonus token (the target's own
token), `accepted` (the draft path) is empty, and `target_prob` is the probability it was chosen with.

- `greedy`: argmax (Step per token, candidates shown). It follows the run's sampling settings, so in a
  sampling run it samples exactly like the baseline -- lossless either way.
- `temperature`, `top_k`, `top_p`, `min_p`, `typical_sampling`: sampling under the method's OWN settings
  (its parameters replace the run's temperature / top-k / top-p; only the seed is taken from the run).
  `lossless = False` here means "not the run's target distribution": each samples exactly what
  `model.generate(do_sample=True, ...)` samples with the same settings (`sampling.generate_kwargs`).
  Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration" (ICLR; top-p); Fan et al. 2018,
  "Hierarchical Neural Story Generation" (ACL; top-k); Nguyen et al. 2024, "Turning Up the Heat: Min-p
  Sampling" (arXiv:2407.01082); Meister et al. 2023, "Locally Typical Sampling" (TACL, arXiv:2202.00666).

Draws use the inverse CDF over the tokens sorted by probability (u ~ U(0, 1); the first token whose cumulative
probability exceeds u), so each Step can say where u fell.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from ..sampling import GREEDY, SamplingConfig, probs as sampling_probs
from ..engine import Method, Pick, Target, token_loop
from ..params import param
from ..trace import ACCEPTED, BONUS_ARGMAX, BONUS_SAMPLED, NOT_REACHED, REJECTED, Node, Timing


def inverse_cdf(p: torch.Tensor, generator: torch.Generator) -> tuple[int, float]:
    """Sample from p by the inverse CDF over tokens sorted by probability; return (token, u)."""
    u = float(torch.rand((), generator=generator, device=p.device))
    sp, idx = torch.sort(p, descending=True)
    j = int(torch.searchsorted(sp.cumsum(0), torch.tensor([u], device=p.device, dtype=sp.dtype)).clamp(max=p.numel() - 1))
    while float(sp[j]) == 0.0 and j > 0:  # never land on a filtered-out token through rounding
        j -= 1
    return int(idx[j]), u


def candidate_nodes(lm, tokens: list[int], probs: list[float], statuses: list[str], reasons: list[str],
                    detail: bool) -> tuple[Node, ...]:
    """Depth-1 candidate nodes under the root."""
    texts = lm.token_texts(tokens) if detail else [""] * len(tokens)
    if not detail:
        return tuple(Node(token=t, parent=-1, depth=1, status=s) for t, s in zip(tokens, statuses))
    return tuple(Node(token=t, parent=-1, depth=1, status=s, text=x, target_prob=p, reason=r)
                 for t, p, s, r, x in zip(tokens, probs, statuses, reasons, texts))


class TokenByToken(Method):
    """A strategy that commits one token per target forward: subclasses implement `choose`."""

    kind = "strategy"
    custom_loop = True
    show = 5  # candidates shown per Step

    def effective(self, sampling: SamplingConfig) -> SamplingConfig:
        """The sampling settings this strategy actually uses."""
        return sampling

    def choose(self, logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator, label
               ) -> tuple[int, list[int], list[float], list[str], list[str], str, dict]:
        """(token, candidate tokens, their probabilities, statuses, reasons, bonus_how, state)."""
        p = sampling_probs(logits, cfg)
        raw = sampling_probs(logits, SamplingConfig(temperature=cfg.temperature or 1.0))
        cands = torch.topk(raw, min(self.show, raw.numel())).indices.tolist()
        if cfg.greedy:
            tok = int(p.argmax())
            how, u = BONUS_ARGMAX, None
        else:
            tok, u = inverse_cdf(p, generator)
            how = BONUS_SAMPLED
        if tok not in cands:
            cands.append(tok)
        pc = p[cands].tolist()
        kept = int((p > 0).sum())
        statuses, reasons = [], []
        for t, pt in zip(cands, pc):
            if t == tok:
                statuses.append(ACCEPTED)
                reasons.append(f"highest probability p={pt:.3f}" if cfg.greedy else
                               f"sampled: u={u:.3f} fell on it (p={pt:.3f}; {kept} tokens kept by {cfg.describe()})")
            elif cfg.greedy:
                statuses.append(REJECTED)
                reasons.append(f"p={pt:.3f} < {float(p[tok]):.3f} of {label(tok)!r}")
            elif pt == 0.0:
                statuses.append(REJECTED)
                reasons.append(f"filtered out by {cfg.describe().replace('sampling ', '')}")
            else:
                statuses.append(NOT_REACHED)
                reasons.append(f"kept (p={pt:.3f}), the draw fell on {label(tok)!r}")
        state = {"kept": kept} if cfg.greedy else {"kept": kept, "u": round(u, 4)}
        return tok, cands, pc, statuses, reasons, how, state

    def run(self, prompt, *, max_new_tokens, sampling, detail, generator, should_stop):
        return token_loop(self.lm, prompt, self._picks(prompt, sampling, detail, generator),
                          max_new_tokens=max_new_tokens, detail=detail, should_stop=should_stop)

    def _picks(self, prompt, sampling, detail, generator):
        lm = self.lm
        cfg = self.effective(sampling)
        target = Target(lm)
        label = (lambda t: lm.token_texts([t])[0]) if detail else str
        t0 = time.perf_counter()
        logits = target.prefill(prompt)[-1]
        root, first = prompt[-1], True
        while True:
            t1 = time.perf_counter()
            tok, cands, pc, statuses, reasons, how, state = self.choose(logits, cfg, generator, label)
            t2 = time.perf_counter()
            nodes = candidate_nodes(lm, cands, pc, statuses, reasons, detail)
            if first:
                state, first = {"config": cfg.describe(), **state}, False
            t3 = time.perf_counter()
            yield Pick(root=root, token=tok, nodes=nodes, how=how, state=state, kv_len=target.kv_len,
                       timing=Timing(verify=t1 - t0, accept=t2 - t1, total=t3 - t0))
            t0 = time.perf_counter()
            logits = target.verify(tok, [], [])[0]
            target.commit(0, [])
            root = tok


@dataclass
class GreedyParams:
    show: int = param(5, "candidates shown per step", lo=1, hi=50)


class Greedy(TokenByToken):
    name = "greedy"
    title = "Greedy (one token per step, candidates shown)"
    paper = "-- (argmax decoding; in a sampling run it samples with the run's settings, like the baseline)"
    lossless = True
    Params = GreedyParams

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        self.show = self.params.show

    def describe(self) -> str:
        return "Greedy: argmax each step (the run's sampling settings when it samples)"


class Sampler(TokenByToken):
    """Sampling under the method's own settings (see the module docstring)."""

    lossless = False

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        self.show = self.params.show

    def settings(self) -> dict:
        return {}

    def effective(self, sampling):
        return SamplingConfig(seed=sampling.seed, **self.settings())

    def describe(self) -> str:
        return (f"{self.title}: {self.effective(SamplingConfig(temperature=1.0)).describe().split(', seed')[0]} "
                "(its own settings; only the seed comes from the run)")


@dataclass
class TemperatureParams:
    temperature: float = param(0.7, "softmax temperature", lo=0.05, hi=5.0)
    show: int = param(5, "candidates shown per step", lo=1, hi=50)


class TemperatureSampling(Sampler):
    name = "temperature"
    title = "Temperature sampling"
    paper = "-- (ancestral sampling from softmax(logits / T))"
    Params = TemperatureParams

    def settings(self):
        return {"temperature": self.params.temperature}


@dataclass
class TopKParams:
    k: int = param(40, "keep the k most likely tokens", lo=1, hi=1000)
    temperature: float = param(1.0, "softmax temperature (applied first)", lo=0.05, hi=5.0)
    show: int = param(5, "candidates shown per step", lo=1, hi=50)


class TopKSampling(Sampler):
    name = "top_k"
    title = "Top-k sampling"
    paper = "Fan et al. 2018, Hierarchical Neural Story Generation (ACL)"
    Params = TopKParams

    def settings(self):
        return {"temperature": self.params.temperature, "top_k": self.params.k}


@dataclass
class TopPParams:
    p: float = param(0.9, "keep the smallest set of tokens with this much probability (the nucleus)", lo=0.01, hi=1.0)
    temperature: float = param(1.0, "softmax temperature (applied first)", lo=0.05, hi=5.0)
    show: int = param(5, "candidates shown per step", lo=1, hi=50)


class TopPSampling(Sampler):
    name = "top_p"
    title = "Top-p (nucleus) sampling"
    paper = "Holtzman et al. 2020, The Curious Case of Neural Text Degeneration (ICLR)"
    Params = TopPParams

    def settings(self):
        return {"temperature": self.params.temperature, "top_p": self.params.p}


@dataclass
class MinPParams:
    min_p: float = param(0.1, "drop tokens below min_p x the top token's probability", lo=0.0, hi=0.99)
    temperature: float = param(1.0, "softmax temperature (applied first)", lo=0.05, hi=5.0)
    show: int = param(5, "candidates shown per step", lo=1, hi=50)


class MinPSampling(Sampler):
    name = "min_p"
    title = "Min-p sampling"
    paper = "Nguyen et al. 2024, Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs (arXiv:2407.01082)"
    Params = MinPParams

    def settings(self):
        return {"temperature": self.params.temperature, "min_p": self.params.min_p}


@dataclass
class TypicalSamplingParams:
    typical_p: float = param(0.9, "probability mass of the locally typical set", lo=0.01, hi=1.0)
    temperature: float = param(1.0, "softmax temperature (applied first)", lo=0.05, hi=5.0)
    show: int = param(5, "candidates shown per step", lo=1, hi=50)


class TypicalSampling(Sampler):
    name = "typical_sampling"
    title = "Locally typical sampling"
    paper = "Meister et al. 2023, Locally Typical Sampling (TACL, arXiv:2202.00666)"
    Params = TypicalSamplingParams

    def settings(self):
        return {"temperature": self.params.temperature, "typical_p": self.params.typical_p}


SAMPLERS = (TemperatureSampling, TopKSampling, TopPSampling, MinPSampling, TypicalSampling)


def sampler_config(method: Sampler, seed: int = 0) -> SamplingConfig:
    """The SamplingConfig a sampling strategy uses (for tests and `model.generate` comparisons)."""
    return dataclasses.replace(method.effective(GREEDY), seed=seed)
