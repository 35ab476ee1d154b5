"""Non-speculative strategies: one Step per token, candidates shown, and the right tokens.

transformers 5 no longer ships contrastive search or group (diverse) beam search in `generate`, so those are
checked against straightforward no-cache reference implementations written here from the papers' definitions
(full forward passes, no KV tricks), and diverse beam search with one group and no penalty against
`generate(num_beams=...)`. Sampling strategies: their sampler against the exact filtered distribution (whose
filters equal transformers' logits warpers), EAD against its two extremes.
"""
import numpy as np
import pytest
import torch

from labkit import engine, methods, metrics
from labkit.sampling import SamplingConfig, generate_kwargs, probs as sampling_probs
from labkit.check import greedy_reference
from labkit.methods.contrastive import ContrastiveParams, ContrastiveSearch
from labkit.methods.diverse_beam import DiverseBeamParams, DiverseBeamSearch
from labkit.methods.ead import EADParams, EntropyAdaptive
from labkit.methods.strategies import SAMPLERS, inverse_cdf, sampler_config
from labkit.trace import ACCEPTED
from labkit.testing import chi2_pvalue as pvalue

PROMPT = [5, 9, 3, 7, 1, 5, 9, 3, 2]


pytestmark = pytest.mark.usefixtures("one_thread")


def tokens_of(steps):
    return [t for s in steps for t in s.tokens]


def test_min_p_and_typical_filters_equal_transformers_warpers():
    from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper)
    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        x = torch.randn(3, 40, generator=g) * (1 + trial % 4)
        for cfg in [SamplingConfig(temperature=0.7, min_p=0.1), SamplingConfig(temperature=1.0, typical_p=0.8),
                    SamplingConfig(temperature=1.3, top_k=20, top_p=0.9, min_p=0.05, typical_p=0.7)]:
            y = TemperatureLogitsWarper(cfg.temperature)(None, x.clone())
            for w in ([TopKLogitsWarper(cfg.top_k)] if cfg.top_k else []) + \
                     ([TopPLogitsWarper(cfg.top_p)] if cfg.top_p < 1 else []) + \
                     ([MinPLogitsWarper(cfg.min_p)] if cfg.min_p else []) + \
                     ([TypicalLogitsWarper(cfg.typical_p)] if cfg.typical_p < 1 else []):
                y = w(None, y)
            assert torch.allclose(torch.softmax(y, -1), sampling_probs(x, cfg), atol=1e-6)
    kw = generate_kwargs(SamplingConfig(temperature=0.8, min_p=0.1, typical_p=0.9))
    assert kw["min_p"] == 0.1 and kw["typical_p"] == 0.9


def test_inverse_cdf_sampler():
    p = torch.softmax(torch.randn(12, generator=torch.Generator().manual_seed(1)), -1)
    p[3] = 0.0
    p = p / p.sum()
    g = torch.Generator().manual_seed(2)
    assert pvalue(np.array([inverse_cdf(p, g)[0] for _ in range(6000)]), p) > 1e-3


@pytest.mark.parametrize("cls", SAMPLERS, ids=[c.name for c in SAMPLERS])
def test_sampling_strategies_sample_their_own_distribution(tiny, cls):
    lm = tiny("llama")
    overrides = {"top_k": {"k": 5}, "top_p": {"p": 0.8}, "min_p": {"min_p": 0.2}, "typical_sampling": {"typical_p": 0.8},
                 "temperature": {"temperature": 0.7}}[cls.name]
    m = methods.create(cls.name, lm, overrides)
    assert m.kind == "strategy" and not m.lossless
    cfg = sampler_config(m)
    with torch.inference_mode():
        logits = lm.model(torch.tensor([PROMPT])).logits[0, -1]
    p = sampling_probs(logits, cfg)
    g = torch.Generator().manual_seed(0)
    draws = [m.choose(logits, cfg, g, str)[0] for _ in range(4000)]
    assert pvalue(np.array(draws), p) > 1e-3
    # end to end: seeded, one Step per token, the chosen candidate accepted with a reason
    a = list(engine.decode(lm, m, PROMPT, max_new_tokens=8, sampling=SamplingConfig(seed=4)))
    b = list(engine.decode(lm, m, PROMPT, max_new_tokens=8, sampling=SamplingConfig(temperature=2.0, seed=4)))
    assert tokens_of(a) == tokens_of(b)  # the run's temperature is not used, its seed is
    assert all(len(s.tokens) == 1 and sum(n.status == ACCEPTED for n in s.nodes) == 1 for s in a)
    assert "sampled: u=" in next(n.reason for n in a[1].nodes if n.status == ACCEPTED)


def test_greedy_strategy_steps(tiny):
    lm = tiny("qwen2")
    steps = list(engine.decode(lm, methods.create("greedy", lm), PROMPT, max_new_tokens=12))
    assert tokens_of(steps) == greedy_reference(lm, PROMPT, 12)
    assert steps[0].kind == "prefill" and all(s.kind == "decode" for s in steps[1:])
    chosen = [next(n for n in s.nodes if n.status == ACCEPTED) for s in steps]
    assert all(c.token == s.bonus and c.reason.startswith("highest probability") for c, s in zip(chosen, steps))
    assert metrics.compute(steps).mean_accept_len == 1.0


# ---- contrastive search -----------------------------------------------------------------------------

@torch.inference_mode()
def naive_contrastive(model, prompt, n, alpha, k):
    """Su et al. 2022, straight from the definition: full forwards, no cache."""
    seq = list(prompt)
    for _ in range(n):
        out = model(torch.tensor([seq]), output_hidden_states=True)
        context = out.hidden_states[-1][0].float()
        probs = torch.softmax(out.logits[0, -1].float(), -1)
        top_p, top_ids = torch.topk(probs, k)
        scores = []
        for v, pv in zip(top_ids.tolist(), top_p.tolist()):
            h = model(torch.tensor([seq + [v]]), output_hidden_states=True).hidden_states[-1][0, -1].float()
            cos = torch.nn.functional.cosine_similarity(context, h[None], dim=-1).max()
            scores.append((1 - alpha) * pv - alpha * float(cos))
        seq.append(top_ids.tolist()[int(np.argmax(scores))])
    return seq[len(prompt):]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_contrastive_matches_reference(tiny, arch):
    lm = tiny(arch)
    m = ContrastiveSearch(lm, ContrastiveParams(alpha=0.6, k=4))
    steps = list(engine.decode(lm, m, PROMPT, max_new_tokens=16))
    assert tokens_of(steps) == naive_contrastive(lm.model, PROMPT, 16, 0.6, 4)
    assert all(len(s.nodes) == 4 and sum(n.status == ACCEPTED for n in s.nodes) == 1 for s in steps)
    assert "max cos" in steps[3].nodes[0].reason
    # alpha = 0 is greedy decoding
    greedy = ContrastiveSearch(lm, ContrastiveParams(alpha=0.0, k=3))
    assert tokens_of(engine.decode(lm, greedy, PROMPT, max_new_tokens=16)) == greedy_reference(lm, PROMPT, 16)


def test_contrastive_matches_reference_smollm2(smol):
    ids = smol.encode("Tell me a short story about a robot.")
    steps = list(engine.decode(smol, ContrastiveSearch(smol, ContrastiveParams(alpha=0.6, k=4)), ids,
                               max_new_tokens=12, detail=False))
    assert tokens_of(steps) == naive_contrastive(smol.model, ids, 12, 0.6, 4)


# ---- diverse beam search ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_one_group_no_penalty_is_generate_beam_search(tiny, arch):
    lm = tiny(arch)
    m = DiverseBeamSearch(lm, DiverseBeamParams(beams=3, groups=1, diversity=0.0))
    steps = list(engine.decode(lm, m, PROMPT, max_new_tokens=14))
    with torch.inference_mode():
        ref = lm.model.generate(torch.tensor([PROMPT]), num_beams=3, do_sample=False, max_new_tokens=14,
                                attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long))[0, len(PROMPT):].tolist()
    assert tokens_of(steps) == ref
    assert steps[-1].finished == "length" and all(len(s.nodes) == 3 for s in steps)


@torch.inference_mode()
def naive_diverse_beam(model, prompt, n, beams, groups, diversity):
    """Vijayakumar et al. with Hamming diversity, full forwards, no cache (no EOS in the tiny models)."""
    g = beams // groups
    hyps = [(list(prompt), 0.0 if i % g == 0 else -1e9) for i in range(beams)]
    for _ in range(n):
        logp = torch.log_softmax(model(torch.tensor([h for h, _ in hyps])).logits[:, -1].float(), -1)
        new, chosen = [], []
        for gi in range(groups):
            rows = range(gi * g, (gi + 1) * g)
            pen = torch.zeros(logp.shape[-1])
            for t in chosen:
                pen[t] += diversity
            cand = [(hyps[b][1] + float(logp[b, x] - pen[x]), b, x) for b in rows for x in range(logp.shape[-1])]
            cand.sort(key=lambda c: -c[0])
            for score, b, x in cand[:g]:
                new.append((hyps[b][0] + [x], score))
                chosen.append(x)
        hyps = new
    return max(hyps, key=lambda h: h[1])[0][len(prompt):]


def test_diverse_beam_matches_reference_and_diversifies(tiny):
    lm = tiny("llama")
    m = DiverseBeamSearch(lm, DiverseBeamParams(beams=4, groups=2, diversity=0.7))
    steps = list(engine.decode(lm, m, PROMPT, max_new_tokens=10))
    assert tokens_of(steps) == naive_diverse_beam(lm.model, PROMPT, 10, 4, 2, 0.7)
    big = DiverseBeamSearch(lm, DiverseBeamParams(beams=4, groups=2, diversity=100.0))
    first = list(engine.decode(lm, big, PROMPT, max_new_tokens=4))[0].nodes
    assert not {n.token for n in first[:2]} & {n.token for n in first[2:]}  # group 1 avoids group 0's tokens
    with pytest.raises(ValueError, match="multiple"):
        list(engine.decode(lm, DiverseBeamSearch(lm, DiverseBeamParams(beams=3, groups=2)), PROMPT, max_new_tokens=4))


def test_diverse_beam_stops_at_eos(tiny):
    lm = tiny("llama")
    free = tokens_of(engine.decode(lm, DiverseBeamSearch(lm, DiverseBeamParams(beams=2, groups=1, diversity=0.0)),
                                   PROMPT, max_new_tokens=12))
    lm.model.generation_config.eos_token_id = free[5]
    try:
        steps = list(engine.decode(lm, DiverseBeamSearch(lm, DiverseBeamParams(beams=2, groups=1, diversity=0.0)),
                                   PROMPT, max_new_tokens=12))
    finally:
        lm.model.generation_config.eos_token_id = None
    assert steps[-1].finished == "eos" and steps[-1].tokens[0] == free[5] and len(steps) <= 12


# ---- entropy-adaptive decoding ---------------------------------------------------------------------

def test_ead_extremes_and_switch_trace(tiny):
    lm = tiny("llama")
    always_large = EntropyAdaptive(lm, EADParams(threshold=0.0))
    steps = list(engine.decode(lm, always_large, PROMPT, max_new_tokens=16))
    assert tokens_of(steps) == greedy_reference(lm, PROMPT, 16)
    assert all(s.state["model"] == "large" for s in steps)
    always_small = EntropyAdaptive(lm, EADParams(threshold=20.0))
    steps = list(engine.decode(lm, always_small, PROMPT, max_new_tokens=16))
    assert tokens_of(steps) == greedy_reference(always_small.small.lm, PROMPT, 16)
    assert all(s.target_forwards == 0 for s in steps)
    # in between: every token is the argmax of the model the trace names
    rolling = sorted(s.state["rolling_entropy"] for s in steps)
    mid = EntropyAdaptive(lm, EADParams(threshold=rolling[len(rolling) // 2], window=2, min_large=2))
    steps = list(engine.decode(lm, mid, PROMPT, max_new_tokens=16))
    assert {s.state["model"] for s in steps} == {"small", "large"} and any("switch" in s.state for s in steps)
    seq = list(PROMPT)
    with torch.inference_mode():
        for s in steps:
            model = lm.model if s.state["model"] == "large" else mid.small.lm.model
            assert int(model(torch.tensor([seq])).logits[0, -1].argmax()) == s.tokens[0]
            seq.append(s.tokens[0])
