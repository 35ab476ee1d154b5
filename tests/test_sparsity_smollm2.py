"""Integration: every sparsity policy on the embedded SmolLM2-135M over a long Spec-Bench RAG prompt (a short
generation), frames round-tripping through a JSON-lines trace; dense through the capture token-identical to plain
decoding."""
import pytest

from labkit import engine, methods, sparsity
from labkit.bench import load_questions
from labkit.sparsity import Options, SparsityFrame
from labkit.trace import Step, load_trace, save_trace

pytestmark = pytest.mark.integration
N_NEW = 6
BUDGET = 64


@pytest.fixture(scope="module")
def long_prompt(smol):
    rag = [q for q in load_questions() if q["bench_category"] == "rag"]
    ids = min((smol.encode(q["turns"][0]) for q in rag[:5]), key=len)  # ~650 tokens
    assert len(ids) > 8 * BUDGET
    return ids


def test_dense_capture_is_token_identical_on_smollm2(smol, long_prompt):
    m = methods.create("prompt_lookup", smol)
    plain = [t for s in engine.decode(smol, m, long_prompt, max_new_tokens=N_NEW, detail=False) for t in s.tokens]
    steps, frames = sparsity.run(smol, m, long_prompt, "dense", max_new_tokens=N_NEW, detail=False)
    assert [t for s in steps for t in s.tokens] == plain
    assert len(frames[-1].layers) == 30 and len(frames[-1].layers[0].heads) == 9


@pytest.mark.parametrize("name", [n for n in sparsity.REGISTRY if n != "dense"])
def test_policy_on_a_long_rag_prompt(smol, long_prompt, name, tmp_path):
    m = methods.create("autoregressive", smol)
    steps, frames = sparsity.run(smol, m, long_prompt, Options(name, {"budget": BUDGET}), max_new_tokens=N_NEW,
                                 detail=False)
    dec = [f for f in frames if f.kind == "decode"]
    assert len(dec) == N_NEW - 1
    assert all(f.kv_ratio < 1 for f in dec) and all(f.recall < 1 for f in dec)
    assert all(f.kl is not None and f.kl >= 0 and 0 <= f.top1 <= 1 for f in dec)
    path = tmp_path / f"{name}.jsonl"
    events = [e for pair in zip(steps, frames) for e in pair]
    save_trace(path, {"policy": name}, events)
    back = load_trace(path).events
    assert back == events and sum(isinstance(e, SparsityFrame) for e in back) == len(frames)
    assert all(isinstance(e, Step) for e in back[::2])
