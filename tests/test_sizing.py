"""Hardware-aware sizing: the decision on hand-made latency curves and acceptance, the acceptance models, the
latency measurement and its cache, and the two methods that use it (still lossless). No timed assertions."""
import dataclasses
import json

import numpy as np
import pytest

from labkit import engine, latency, methods, sizing
from labkit.check import greedy_reference
from labkit.templates import RANK_PRIOR, paper_choices

FLAT = sizing.LatencyCurve(tokens=(1, 81), seconds=(0.010, 0.0101))
STEEP = sizing.LatencyCurve(tokens=(1, 2, 4, 8, 16, 81), seconds=(0.040, 0.046, 0.054, 0.084, 0.097, 0.175))


def test_choose_plain_when_nothing_is_accepted():
    c = sizing.choose([1.0] * 9, STEEP.table(8))
    assert c.nodes == 0 and c.expected_tokens == 1.0


def test_choose_big_when_flat_and_accepted():
    expected = 1 + 0.5 * np.arange(81)  # every extra node adds half a token
    assert sizing.choose(expected, FLAT.table(80)).nodes == 80


def test_choose_balances_cost_and_gain():
    expected = [1.0, 1.5, 1.8, 1.9]  # diminishing returns
    latency = [1.0, 1.1, 1.5, 3.0]
    c = sizing.choose(expected, latency)
    assert c.nodes == 1 and c.tokens_per_s == pytest.approx(1.5 / 1.1)
    assert sizing.choose(expected, latency, overhead=1.0).nodes == 0  # drafting cost makes it not pay


def test_latency_curve_interpolates_and_extrapolates():
    curve = sizing.LatencyCurve(tokens=(1, 3, 5), seconds=(1.0, 2.0, 4.0))
    assert curve.t(0) == 1.0 and curve.t(1) == pytest.approx(1.5) and curve.t(4) == 4.0
    assert curve.t(6) == pytest.approx(6.0)  # last slope continued
    assert list(curve.table(2)) == [1.0, 1.5, 2.0]
    back = sizing.LatencyCurve.from_json(json.loads(json.dumps(curve.to_json())))
    assert back == curve and curve.points() == [(1, 1.0), (3, 2.0), (5, 4.0)]


def test_rank_acceptance_learns_and_backs_off():
    acc = sizing.RankAcceptance(k=4, max_depth=3, prior=(0.4, 0.2, 0.1, 0.05))
    assert acc.rates()[1][0] == pytest.approx(0.4) and acc.rates()[3][0] == pytest.approx(0.4)  # prior only
    for _ in range(200):
        acc.update([1, 1, 2], [0, 0, -1])  # depth 1: rank 0 always right; depth 2: never
    r = acc.rates()
    assert r[1][0] > 0.9 and r[1][1] < 0.05 and r[2][0] < 0.2
    assert r[3][0] == pytest.approx(r[2][0], rel=0.2)  # no depth-3 data: borrows from depth 2
    probs = acc.path_probs([(0,), (0, 0), (1,)])
    assert probs[0] > probs[1] and probs[0] > probs[2]


def test_chain_acceptance_expected_tokens():
    acc = sizing.ChainAcceptance(max_len=4, prior=0.5, strength=1e-9)
    for _ in range(50):
        acc.update(proposed=4, accepted=4)
    e = acc.expected()
    assert e[0] == 1.0 and e[4] == pytest.approx(5.0, abs=1e-3)
    acc.reset()
    for _ in range(50):
        acc.update(proposed=4, accepted=0)
    assert acc.expected()[4] == pytest.approx(1.0, abs=1e-3)


def tree_sizer(curve, max_nodes=80):
    cands = [c for c in paper_choices() if max(c) < 8]
    return sizing.TreeSizer(None, cands, 8, max_nodes, prior=RANK_PRIOR, curve=curve)


def test_tree_sizer_zero_acceptance_picks_plain_decoding():
    s = tree_sizer(STEEP)
    for _ in range(100):
        s.acceptance.update([1, 2, 2, 3], [-1, -1, -1, -1])
    paths, choice = s.choose()
    assert choice.nodes == 0 and paths == []


def test_tree_sizer_high_acceptance_flat_curve_picks_big_trees():
    s = tree_sizer(FLAT)
    for _ in range(100):
        s.acceptance.update([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0])
        s.acceptance.update([1, 2, 3], [1, 1, 2])
    paths, choice = s.choose()
    assert choice.nodes >= 40 and len(paths) == choice.nodes
    assert all(len(p) == 1 or p[:-1] in set(paths) for p in paths)  # a tree: every parent path is in it
    assert paths == sorted(paths, key=lambda c: (len(c), c))


def test_tree_sizer_steep_curve_picks_small_trees():
    s = tree_sizer(STEEP)
    for _ in range(100):
        s.acceptance.update([1, 2, 3], [0, 0, 1])
    _, choice = s.choose()
    assert 1 <= choice.nodes <= 16


def test_measure_and_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    lm = tiny("llama")
    curve = sizing.latency_curve(lm, max_tokens=9)
    assert curve.tokens[0] == 1 and curve.tokens[-1] == 9 and len(curve.seconds) == len(curve.tokens)
    assert all(s > 0 for s in curve.seconds) and len(curve.samples) == 7 * len(curve.tokens)
    files = list((tmp_path / "sizing").glob("*.json"))
    assert len(files) == 1
    monkeypatch.setattr(latency, "_quieter_now", lambda load, device: False)
    again = sizing.latency_curve(lm, max_tokens=9)
    assert again == curve  # read back from the cache, not re-measured
    monkeypatch.setattr(latency, "_quieter_now", lambda load, device: True)
    assert sizing.latency_curve(lm, max_tokens=9) != curve  # measured under contention: measured again


def test_token_recycling_auto_is_lossless_and_traces_its_decision(tiny):
    lm = tiny("llama")
    m = methods.create("token_recycling", lm, {"sizing": "auto"})
    m.sizer = tree_sizer(FLAT)
    ids = [3, 5, 7, 3, 5, 7, 3, 5, 9, 11]
    for _ in range(2):
        steps = list(engine.decode(lm, m, ids, max_new_tokens=30))
        assert [t for s in steps for t in s.tokens] == greedy_reference(lm, ids, 30)
    dec = [s for s in steps if s.kind == "decode"]
    assert "latency_curve" in dec[0].state and "sizing" in dec[0].state
    assert {"nodes", "expected_tokens", "round_ms"} <= set(dec[0].state["sizing"])
    assert any(s.nodes for s in dec)


def test_token_recycling_degrades_to_plain_decoding(tiny):
    lm = tiny("llama")
    m = methods.create("token_recycling", lm)
    m.sizer = tree_sizer(STEEP)
    for _ in range(200):
        m.sizer.acceptance.update([1, 2], [-1, -1])
    m.sizer.acceptance.update = lambda *a: None  # hold the estimate at "nothing is accepted"
    ids = [3, 5, 7, 3, 5, 7]
    steps = list(engine.decode(lm, m, ids, max_new_tokens=20))
    assert [t for s in steps for t in s.tokens] == greedy_reference(lm, ids, 20)
    dec = [s for s in steps if s.kind == "decode"]
    assert all(s.state["sizing"]["nodes"] == 0 for s in dec if not s.state["sizing"].get("probe"))
    assert all(not s.nodes for s in dec if not s.state["sizing"].get("probe"))
    probes = [s for s in dec if s.state["sizing"].get("probe")]
    # on a steep curve with nothing accepted a probe loses ~t(1) - t(0): at most one in `interval` rounds
    alt = sizing.choose([1.0, 1.0], STEEP.table(1), min_nodes=1)
    interval = sizing.probe_interval(alt, STEEP.t(0))
    assert interval == 8 and 1 <= len(probes) <= -(-len(dec) // interval)


def test_probe_interval_is_proportional_to_what_a_probe_loses():
    plain = 0.040
    cheap = sizing.Choice(nodes=4, expected_tokens=1.0, seconds=0.042, tokens_per_s=0, plain_tokens_per_s=0)
    dear = sizing.Choice(nodes=4, expected_tokens=1.0, seconds=0.080, tokens_per_s=0, plain_tokens_per_s=0)
    paying = sizing.Choice(nodes=4, expected_tokens=2.5, seconds=0.080, tokens_per_s=0, plain_tokens_per_s=0)
    # loss / (2% of t(0)): 0.002 / 0.0008 -> 3 rounds; 0.040 / 0.0008 -> 50 rounds; a probe that pays: every round
    assert sizing.probe_interval(cheap, plain) == 3
    assert sizing.probe_interval(dear, plain) == 50
    assert sizing.probe_interval(paying, plain) == 1
    # the cost of probing stays within the budget: loss per probe / rounds between probes <= 2% of t(0)
    for c in (cheap, dear):
        loss = c.seconds - c.expected_tokens * plain
        assert loss / sizing.probe_interval(c, plain) <= sizing.PROBE_BUDGET * plain + 1e-12


def test_prompt_lookup_sizing_off_and_auto_are_lossless(tiny):
    lm = tiny("llama")
    ids = [3, 5, 7, 9, 3, 5, 7, 9, 3, 5]
    ref = greedy_reference(lm, ids, 30)
    for params in ({"sizing": "off"}, {"sizing": "auto"}):
        m = methods.create("prompt_lookup", lm, params)
        if m.sizer is not None:
            m.sizer = sizing.ChainSizer(None, m.params.draft_len, curve=STEEP)
        steps = list(engine.decode(lm, m, ids, max_new_tokens=30))
        assert [t for s in steps for t in s.tokens] == ref


def test_token_recycling_warm_up_drafts_big_trees(tiny):
    lm = tiny("llama")
    m = methods.create("token_recycling", lm)
    m.sizer = tree_sizer(STEEP)
    ids = [3, 5, 7, 3, 5, 7, 3, 5]
    with m.warm_up(nodes=40):
        steps = list(engine.decode(lm, m, ids, max_new_tokens=20))
    assert [t for s in steps for t in s.tokens] == greedy_reference(lm, ids, 20)
    assert all(s.state.get("warm_up") for s in steps if s.kind == "decode")
    assert max(len(s.nodes) for s in steps) > 16 and m._pinned is None


def test_token_recycling_prompt_rows_drafts_from_the_first_round(tiny):
    """prompt_rows fills the matrix from the prompt before decoding: the rows of the prompt's tokens are known
    before round 1 (so a fresh matrix drafts as soon as the root is a token the prompt holds), the output stays
    token-identical, and the first decode Step says what was read."""
    from labkit import engine, methods
    from labkit.check import greedy_reference

    lm = tiny("llama")
    prompt = [5, 9, 3, 7, 1, 5, 9, 3, 2, 5, 9]
    drafted, first = {}, {}
    calls = []
    hook = lm.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        for name, extra in (("cold", {}), ("warm", {"prompt_rows": True})):
            m = methods.create("token_recycling", lm, {"sizing": "off", "nodes": 8, **extra})
            calls.clear()
            gen = engine.decode(lm, m, prompt, max_new_tokens=16)
            steps = [next(gen)]
            rows_after_prefill = m.matrix.clone()  # the warm run's is checked below
            steps += list(gen)
            assert len(calls) == len(steps)  # one target forward per round: the prompt is read by the prefill
            assert [t for s in steps for t in s.tokens] == greedy_reference(lm, prompt, 16)
            drafted[name] = [len(s.nodes) for s in steps[1:]]
            first[name] = steps[1].state
    finally:
        hook.remove()
    # row of prompt[i] = the target's top-k after position i (the last occurrence of each token wins)
    import torch

    with torch.inference_mode():
        logits = lm.model(torch.tensor([prompt])).logits[0]
    for i, tok in enumerate(prompt):
        if tok not in prompt[i + 1:]:
            assert rows_after_prefill[tok].tolist() == torch.topk(logits[i], 8).indices.tolist()
    assert "prompt_rows" not in first["cold"]
    assert first["warm"]["prompt_rows"] == {"read": len(prompt), "new_rows": len(set(prompt))}
    assert first["warm"]["matrix_rows_known"] >= len(set(prompt)) > first["cold"]["matrix_rows_known"]
    # a round where the prompt's rows let the warm matrix draft and the cold one has nothing to draft from
    assert any(w and not c for w, c in zip(drafted["warm"], drafted["cold"])), drafted


def test_expected_speedup_with_and_without_the_drafts_time(monkeypatch):
    """The verify passes alone predict 2 tokens per t(1); a draft that took as long as a plain step halves it,
    and the app's speed line then says both, with the drafting share."""
    from labkit.app.updates import speed_md
    from labkit.trace import ACCEPTED, Node, Step, Timing

    curve = latency.LatencyCurve(tokens=(1, 81), seconds=(0.010, 0.010))
    nodes = (Node(1, -1, 1, ACCEPTED),)
    draft = [Step(i, "decode", 0, "", nodes, (0,), (1, 2), "", 2, "", "argmax", 1, 3,
                  Timing(draft=0.010, verify=0.010, total=0.020), 10) for i in range(4)]
    assert latency.expected_speedup(draft, curve) == pytest.approx(2.0)
    assert latency.expected_speedup(draft, curve, with_draft=True) == pytest.approx(1.0)
    assert latency.draft_share(draft) == pytest.approx(0.5)
    assert latency.expected_text(draft, curve) == "×1.00 with its drafting (×2.00 if free)"
    monkeypatch.setattr(latency, "latency_curve", lambda lm: curve)
    line = speed_md(draft, None)
    assert "measured **×1.00**" in line and "expected **×1.00**" in line
    assert "50% of the decode time in 12 draft forwards" in line and "×2.00 if drafting were free" in line
    lookup = [dataclasses.replace(s, timing=Timing(verify=0.010, total=0.010), draft_forwards=0) for s in draft]
    assert "expected **×2.00** (its latency curve)" in speed_md(lookup, None)
