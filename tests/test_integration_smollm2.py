"""Integration: every lossless method on the embedded SmolLM2-135M-Instruct, real prompts, fp32 greedy,
must match model.generate(do_sample=False) token for token."""
import pytest

from labkit import engine, methods
from labkit.check import check, greedy_reference

pytestmark = pytest.mark.integration

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Repeat after me three times: the cat sat on the mat.",
    "Write a Python function that adds two numbers.",
]
LOSSLESS = methods.variants(lossless=True)  # every lossless method and each named variant


@pytest.fixture(scope="module")
def references(smol):
    out = {}
    for p in PROMPTS:
        ids = smol.encode(p)
        out[p] = (ids, greedy_reference(smol, ids, 40))
    return out


@pytest.mark.parametrize("name", LOSSLESS)
def test_greedy_equivalence_smollm2(smol, references, name):
    if methods.get(name).supports(smol):
        pytest.skip(methods.get(name).supports(smol))
    m = methods.create(name, smol)
    for p, (ids, ref) in references.items():
        got = [t for s in engine.decode(smol, m, ids, max_new_tokens=40, detail=False) for t in s.tokens]
        assert got == ref, f"{name}: {p!r}"


def test_check_reports_identical(smol):
    res = check(smol, methods.create("token_recycling", smol), PROMPTS[:1], max_new_tokens=24)
    assert res[0].identical and "identical" in res[0].line()


def test_check_explains_a_divergence(smol, monkeypatch):
    """Simulate a bug in the acceptance rule; the explainer must call it a bug, not numerics."""
    from labkit import accept
    from labkit.methods import token_recycling

    real = accept.greedy_tree

    def buggy(parents, tokens, argmax, label=str):
        out = real(parents, tokens, argmax, label)
        if tokens and not out.path:  # accept the first draft token even though the target disagrees
            out.path = [0]
        return out

    tr = methods.create("token_recycling", smol, {"sizing": "off", "nodes": 16})  # drafts every round
    list(engine.decode(smol, tr, smol.encode(PROMPTS[0]), max_new_tokens=24))  # warm the matrix (correct rule)
    monkeypatch.setattr(token_recycling, "greedy_tree", buggy)  # the rule where Token Recycling looks it up
    res = check(smol, tr, [PROMPTS[2]], max_new_tokens=24)
    r = res[0]
    assert not r.identical and r.position is not None
    assert r.margin > 1e-3 and r.fp64_sides_with == "baseline" and "bug" in r.verdict
    assert "first divergence" in r.line()


def test_chat_template_is_used(smol):
    ids = smol.encode("hello")
    text = smol.decode(ids)
    assert "<|im_start|>user" in text and text.rstrip().endswith("assistant")
    assert smol.encode("hello", chat=False) == smol.tokenizer("hello")["input_ids"]
