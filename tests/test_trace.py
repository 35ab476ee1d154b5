import json

import pytest

from labkit import engine, methods
from labkit.trace import (Node, Step, Timing, TraceError, TraceWriter, load_trace, parse_trace, save_trace)


def run_steps(tiny, name="token_recycling"):
    from labkit.testing import flat_curve

    lm = tiny("llama")
    m = methods.create(name, lm)
    if getattr(m, "sizer", None) is not None:  # drafts must happen whatever this machine's measured curve says
        m.sizer.use_curve(flat_curve())
    list(engine.decode(lm, m, [3, 4, 5, 3, 4, 5, 3], max_new_tokens=20))  # warm the method's state
    return list(engine.decode(lm, m, [3, 4, 5, 3, 4, 5, 3], max_new_tokens=20))


def test_roundtrip_exact(tiny, tmp_path):
    steps = run_steps(tiny)
    assert any(s.nodes for s in steps) and any(s.state for s in steps)
    cfg = {"model": "tiny", "method": "token_recycling", "params": {"k": 8}, "sampling": {"seed": 0}}
    path = tmp_path / "t.jsonl"
    save_trace(path, cfg, steps)
    tr = load_trace(path)
    assert tr.config == cfg and not tr.truncated
    assert tr.steps == steps
    assert all(isinstance(s.nodes, tuple) and isinstance(s.timing, Timing) for s in tr.steps)


def test_interrupted_write_leaves_readable_file(tiny, tmp_path):
    steps = run_steps(tiny)
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, {"m": 1}) as w:
        for s in steps[:3]:
            w.write(s)
    with open(path, "a") as f:  # simulate a crash in the middle of a line
        f.write('{"type": "step", "index": 3, "kind": "dec')
    tr = load_trace(path)
    assert tr.truncated and tr.steps == steps[:3]


@pytest.mark.parametrize("text, msg", [
    ("", "empty"),
    ("hello world\n", "not JSON"),
    ('{"a": 1}\n', "not a labkit trace"),
    ('{"schema": "labkit.trace", "version": 99, "config": {}}\n', "version 99"),
    ('{"schema": "labkit.trace", "version": 1, "config": {}}\n{"type": "alien"}\n', "line 2"),
    ('{"schema": "labkit.trace", "version": 1, "config": {}}\n{"type": "step", "index": 0}\n', "line 2"),
])
def test_foreign_or_malformed_traces_raise_one_clear_error(text, msg):
    with pytest.raises(TraceError, match=msg):
        parse_trace(text)


def test_binary_file_is_rejected(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TraceError):
        load_trace(p)


def test_save_is_atomic(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("old content")

    def bad():
        yield Step(0, "prefill", 1, "", (), (), (1,), "x", 1, "", "argmax", 1, 0, Timing(), 1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_trace(p, {}, bad())
    assert p.read_text() == "old content"
    assert not (tmp_path / "t.jsonl.tmp").exists()


def test_step_json_is_plain():
    s = Step(1, "decode", 5, "a", (Node(7, -1, 1, "accepted", "b", 0.5, 0.25, 0.5, 0.1, "r"),), (0,), (7, 8), "bc", 8,
             "c", "argmax", 1, 0, Timing(0.1, 0.2, 0.3, 0.4, 1.0), 10, "", {"x": [1, 2]})
    line = json.loads(__import__("labkit.trace", fromlist=["event_to_json"]).event_to_json(s))
    assert line["type"] == "step" and line["nodes"][0]["token"] == 7 and line["state"] == {"x": [1, 2]}


def test_trace_with_lazily_registered_events_loads_in_a_fresh_process(tmp_path):
    """A trace holding sparsity frames loads where only labkit.trace was imported (the module that registers
    the event type is imported on demand)."""
    import subprocess
    import sys

    from labkit.sparsity import SparsityFrame

    frame = SparsityFrame(step=1, kind="decode", policy="streaming_llm", kv_len=10, queries=(9,), layers=())
    path = tmp_path / "t.jsonl"
    save_trace(path, {"method": "x"}, [frame])
    code = ("import sys; from labkit import trace; assert 'labkit.sparsity' not in sys.modules; "
            f"t = trace.load_trace({str(path)!r}); print(type(t.events[0]).__name__, t.events[0].policy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["SparsityFrame", "streaming_llm"]


def test_unsupported_method_fails_before_anything_runs(tiny, tmp_path):
    """Session.stream checks Method.supports when it is called, not when the first Step is pulled: no trace file."""
    from labkit.methods.autoregressive import Autoregressive
    from labkit.session import Session

    class Picky(Autoregressive):
        @classmethod
        def supports(cls, lm):
            return "needs at least 100 layers"

    lab = Session(lm=tiny("llama"))
    path = tmp_path / "t.jsonl"
    with pytest.raises(ValueError, match="cannot run on .*100 layers"):
        lab.stream(Picky(lab.lm), "hello", max_new_tokens=4, chat=False, trace=str(path))
    assert not path.exists()


def test_concurrent_saves_of_one_path_do_not_collide(tmp_path):
    import threading

    steps = []  # the header alone: the race is about the files, not their size
    path = tmp_path / "t.jsonl"
    errors = []

    def save():
        try:
            save_trace(path, {"method": "x"}, steps)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=save) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and load_trace(path).config["method"] == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]  # no temporary file left behind


def _real_trace(tiny, tmp_path):
    from labkit.sparsity import SparsityFrame

    lm = tiny("llama")
    steps = list(engine.decode(lm, methods.create("token_recycling", lm, {}), [1, 2, 3, 1, 2, 3, 1], max_new_tokens=12))
    frame = SparsityFrame(step=1, kind="decode", policy="streaming_llm", kv_len=10, queries=(9,), layers=(),
                          kv_kept=((4, 4),), recall=0.9)
    path = tmp_path / "run.jsonl"
    save_trace(path, {"method": "token_recycling", "model": "tiny"}, [*steps, frame])
    return path, steps


def test_rounds_carry_start_times_in_order(tiny, tmp_path):
    _, steps = _real_trace(tiny, tmp_path)
    assert steps[0].timing.start < 0.5
    for a, b in zip(steps, steps[1:]):
        assert a.timing.start + a.timing.total <= b.timing.start + 1e-6


def test_chrome_export_opens_as_trace_events(tiny, tmp_path, capsys):
    from labkit.cli import main

    path, steps = _real_trace(tiny, tmp_path)
    assert main(["trace", "export", "--chrome", str(path)]) == 0
    doc = json.loads((tmp_path / "run.chrome.json").read_text())
    rounds = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] in ("prefill", "decode")]
    phases = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "phase"]
    assert len(rounds) == len(steps) and phases
    for p in phases:  # every phase nests inside one round
        assert any(r["ts"] <= p["ts"] and p["ts"] + p["dur"] <= r["ts"] + r["dur"] + 1 for r in rounds)
    assert main(["trace", "export", "--chrome", str(tmp_path / "missing.jsonl")]) == 2
    assert "labkit: error:" in capsys.readouterr().err


def test_the_published_schema_is_the_generated_one_and_validates_real_lines(tiny, tmp_path):
    from pathlib import Path

    import jsonschema

    from labkit.trace import json_schema

    schema = json_schema()
    published = Path(__file__).resolve().parents[1] / "docs" / "trace.schema.json"
    assert json.loads(published.read_text()) == schema, "re-run: labkit trace schema > docs/trace.schema.json"
    path, _ = _real_trace(tiny, tmp_path)
    validator = jsonschema.Draft202012Validator(schema)
    lines = path.read_text().splitlines()
    for line in lines:
        validator.validate(json.loads(line))
    bad = json.loads(lines[1])
    bad["nodes"] = "oops"
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)
