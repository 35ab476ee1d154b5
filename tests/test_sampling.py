"""Sampling through the engine preserves the target distribution, for every lossless method.

For a tiny model (vocabulary 32) the exact marginal distributions of the 2nd, 3rd and 4th generated tokens are
enumerated (all 32^3 prefixes, in batches, once per sampling configuration); each method then samples many
short generations and a chi-square test compares the empirical marginals with the exact ones. Those tokens are
the ones the acceptance rule decides (the 1st comes straight from the prefill): the first decode round may
draft up to two tokens before its bonus, so a tree's depth-2 decisions are tested, not only depth 1.
The distribution guarantee itself rests on the rule-level tests (test_accept.py, test_zoo_rules.py: exact
distributions over whole trees on toy vocabularies); these check that the engine wires every method to them.
"""
import dataclasses

import numpy as np
import pytest
import torch

from labkit import engine, methods
from labkit.sampling import SamplingConfig, probs
from labkit.testing import chi2_pvalue

LOSSLESS = methods.variants(lossless=True)  # every lossless method and each named variant
RUNS = 1000
# About 150 chi-square checks run (methods x configurations x 3 tokens) on fixed seeds: at 1e-4 the chance that
# a correct method fails one by chance stays near 1.5%. A broken rule fails by far more: at 1000 runs the
# rule-level tests' deliberately wrong rules give p-values below 1e-10. (Token Recycling at T=0.7, top-k 8,
# top-p 0.9 gave p = 2.6e-4 for token 3 on seeds 0-999, and 0.03, 0.74, 0.15, 0.40 on four other batches of
# 3000 seeds: chance, which a 1e-3 threshold turned into a failure.)
P_MIN = 1e-4


def make_prompt(lm):
    """The model's own greedy continuation of a short seed: it loops, so n-gram drafts find matches."""
    from labkit.check import greedy_reference

    return [5, 9, 3] + greedy_reference(lm, [5, 9, 3], 13)


_EXACT: dict = {}


def _next(model, rows: list[list[int]], cfg) -> torch.Tensor:
    out = [probs(model(torch.tensor(rows[i:i + 8192]), logits_to_keep=1).logits[:, -1], cfg)
           for i in range(0, len(rows), 8192)]
    return torch.cat(out)


@torch.inference_mode()
def exact_marginals(lm, cfg, PROMPT):
    """The exact marginals of the 2nd, 3rd and 4th generated tokens (computed once per model, config, prompt)."""
    key = (id(lm), cfg, tuple(PROMPT))
    if key not in _EXACT:
        model = lm.model
        V = lm.config.vocab_size
        p1 = _next(model, [PROMPT], cfg)[0]
        p2 = _next(model, [PROMPT + [a] for a in range(V)], cfg)  # [x1, x2]
        p3 = _next(model, [PROMPT + [a, b] for a in range(V) for b in range(V)], cfg).view(V, V, V)
        p4 = _next(model, [PROMPT + [a, b, c] for a in range(V) for b in range(V) for c in range(V)],
                   cfg).view(V, V, V, V)
        j12 = p1[:, None] * p2
        j123 = j12[:, :, None] * p3
        _EXACT[key] = (j12.sum(0), j123.sum((0, 1)), (j123[..., None] * p4).sum((0, 1, 2)))
    return _EXACT[key]


def chi2(samples, p):
    return chi2_pvalue(samples, p)


BASE_CONFIGS = {"T1": SamplingConfig(temperature=1.0),
                "T0.7-topk8-topp0.9": SamplingConfig(temperature=0.7, top_k=8, top_p=0.9)}
EXTRA_CONFIGS = {"T1-minp0.1": SamplingConfig(temperature=1.0, min_p=0.1),
                 "T1.2-typical0.8": SamplingConfig(temperature=1.2, typical_p=0.8)}
# min-p and typical-p go through the same `sampling.probs` for draft and target, so one method per acceptance
# family checks them (point masses, a q chain, siblings without replacement, K-SEQ, SJD); every method runs
# the base configurations.
EXTRA_FAMILY = ["token_recycling", "draft_model", "rsd_c", "spectr", "lookahead"]
CASES = ([pytest.param(n, c, id=f"{n}-{cid}") for n in LOSSLESS for cid, c in BASE_CONFIGS.items()]
         + [pytest.param(n, c, id=f"{n}-{cid}") for n in EXTRA_FAMILY if n in LOSSLESS
            for cid, c in EXTRA_CONFIGS.items()])


@pytest.mark.parametrize("name,cfg", CASES)
def test_sampling_preserves_target_distribution(tiny, name, cfg):
    lm = tiny("llama")
    if methods.get(name).supports(lm):
        pytest.skip(methods.get(name).supports(lm))
    PROMPT = make_prompt(lm)
    exact = exact_marginals(lm, cfg, PROMPT)
    m = methods.create(name, lm)
    if getattr(m, "sizer", None) is not None:  # decide on a flat curve: the drafts must be made and verified
        from labkit.testing import flat_curve

        m.sizer.use_curve(flat_curve())
    seen = [[], [], []]
    accepted = 0
    for seed in range(RUNS):
        c = dataclasses.replace(cfg, seed=seed)
        steps = list(engine.decode(lm, m, PROMPT, max_new_tokens=4, sampling=c, detail=False))
        toks = [t for s in steps for t in s.tokens]
        for i in range(3):
            seen[i].append(toks[i + 1])
        accepted += sum(len(s.accepted) for s in steps)
    for i in range(3):
        assert chi2(np.array(seen[i]), exact[i]) > P_MIN, f"token {i + 2}"
    if methods.get(name).kind == "speculative":
        assert accepted > RUNS // 20, f"{name}: too few accepted drafts ({accepted}) to exercise the rule"


@pytest.mark.parametrize("name", LOSSLESS)
def test_same_seed_and_state_same_output(tiny, name):
    """Seeded runs repeat exactly from the same method state. (A warmer Token Recycling matrix drafts other
    tokens and so draws other random numbers: same distribution, different sample.) Hardware-aware sizing
    chooses tree sizes from measured wall times, so it is turned off here: with it, the same seed may draft a
    different tree and so draw other random numbers."""
    lm = tiny("llama")
    cfg = SamplingConfig(temperature=1.0, seed=42)
    cls = methods.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Params)} if dataclasses.is_dataclass(cls.Params) else set()
    timing_free = {"sizing": "off"} if "sizing" in fields else None
    m = methods.create(name, lm, timing_free)
    outs = []
    for _ in range(2):
        m.reset()
        outs.append([t for s in engine.decode(lm, m, make_prompt(lm), max_new_tokens=20, sampling=cfg) for t in s.tokens])
    assert outs[0] == outs[1]


def test_sampling_config_validation():
    with pytest.raises(ValueError):
        SamplingConfig(temperature=-1)
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError):
        SamplingConfig(min_p=1.0)
    with pytest.raises(ValueError):
        SamplingConfig(typical_p=0)
    assert SamplingConfig().greedy and not SamplingConfig(temperature=0.5).greedy
