"""The app's handlers, driven directly (they are generators over Steps): no server, no browser, tiny models."""
import json
import threading
from pathlib import Path

import pytest

from labkit.app import (
    App, AppConfig, BENCH_HEADERS, bench_table, COMPARE_COLUMNS, compare_verdict, config, FIGURES, method_label,
    ModelPool, Step, Throttle, UNCHANGED, Visitor,
)
from labkit import methods
from labkit.session import Session
from labkit.testing import hold_in_another_thread
from labkit.trace import load_trace

PROMPT = "w1 w2 w3 w1 w2 w3 w1"


def make_app(lm, **kw):
    # plots redraw only on the first step and at the end (drawing every step is slow on a busy CPU)
    # the text updates after every round (text_interval=0), so a test sees each round
    cfg = dict(models=("tiny-llama",), max_prompt_chars=200, max_new_tokens=64, plot_interval=1e9,
               stats_interval=1e9, text_interval=0.0)
    cfg.update(kw)
    return App(AppConfig(**cfg), ModelPool(("tiny-llama",), loader=lambda name: lm))


@pytest.fixture()
def app(tiny):
    return make_app(tiny("llama"))


@pytest.fixture(scope="module")
def visited(tiny):
    """An app and a visitor with one finished run (shared by the validation tests, which must not change it)."""
    a, v = make_app(tiny("llama")), Visitor()
    list(a.live(v, "tiny-llama", "token_recycling", PROMPT, 8, chat=False))
    return a, v


def live(app, visitor, **kw):
    args = dict(model="tiny-llama", method="token_recycling", prompt=PROMPT, max_new_tokens=24, chat=False)
    args.update(kw)
    return list(app.live(visitor, **args))


def test_live_streams_and_matches_session(app, tiny):
    v = Visitor()
    errors = len(FIGURES.errors)
    ups = live(app, v)
    assert len(FIGURES.errors) == errors, FIGURES.errors[errors:]  # no view failed
    assert len(ups) > 3 and ups[-1].done and not ups[-1].error
    ref = Session(lm=tiny("llama")).run("token_recycling", PROMPT, max_new_tokens=24, chat=False)
    assert ups[-1].text == ref.text
    # the text grows step by step while it streams
    texts = [u.text for u in ups if u.text is not UNCHANGED]
    assert all(a == b[: len(a)] for a, b in zip(texts, texts[1:]))
    assert "tok/s" in ups[-1].metrics and "mean acceptance length" in ups[-1].metrics
    assert "target forwards" in ups[-1].metrics
    assert ups[-1].status.startswith("finished")
    assert len(v.runs) == 1 and v.selected in v.runs
    rec = v.runs[v.selected]
    # the record holds the whole run (its rounds may differ from ref's: sizing decides on measured times)
    assert rec.config["method"] == "token_recycling" and [t for s in rec.steps for t in s.tokens] == ref.tokens


def test_plot_updates_are_throttled(tiny):
    ups = live(make_app(tiny("llama"), plot_interval=1e9), Visitor())
    drawn = [u for u in ups if u.tree is not UNCHANGED]
    assert len(drawn) == 2  # the first step with a tree, then the final redraw; every other step skips the plot
    assert ups[-1].tree is not UNCHANGED
    assert all(u.html is not UNCHANGED for u in ups[1:])  # the text updates every step


def test_throttle():
    now = [0.0]
    t = Throttle(0.3, clock=lambda: now[0])
    assert t.due() and not t.due()
    now[0] = 0.29
    assert not t.due()
    now[0] = 0.31
    assert t.due() and t.due(force=True)


BAD = [
    (dict(prompt=""), "the prompt is empty"),
    (dict(prompt="   \n"), "the prompt is empty"),
    (dict(prompt="w1 " * 100), "at most 200"),
    (dict(method="nope"), "unknown method 'nope'"),
    (dict(method=None), "unknown method"),
    (dict(max_new_tokens=0), "out of range [1, 64]"),
    (dict(max_new_tokens=10_000), "out of range [1, 64]"),
    (dict(max_new_tokens=3.5), "whole number"),
    (dict(max_new_tokens="lots"), "whole number"),
    (dict(mode="beam"), "decoding must be one of"),
    (dict(mode="sampling", temperature=0), "temperature=0 is out of range"),
    (dict(mode="sampling", temperature=9), "temperature=9 is out of range"),
    (dict(mode="sampling", top_p=0), "top_p=0 is out of range"),
    (dict(mode="sampling", top_k=-1), "top_k=-1 is out of range"),
    (dict(mode="sampling", seed=-3), "seed=-3 is out of range"),
    (dict(params={"k": 100}), "parameter k=100 is out of range [1, 32]"),
    (dict(params={"k": 2.5}), "must be an integer"),
    (dict(params={"k": None}), "parameter k of token_recycling is empty"),
    (dict(params={"bogus": 1}), "unknown parameter 'bogus'"),
    (dict(method="autoregressive", params={"k": 3}), "takes no parameters"),
    (dict(model="Qwen/Qwen2.5-0.5B-Instruct"), "not on this app's allow-list"),
    (dict(model="smollm2-135m"), "not on this app's allow-list"),
    (dict(model=""), "no model chosen"),
    (dict(method="draft_model", params={"draft": "Qwen/Qwen2.5-0.5B"}), "not on this app's allow-list"),
    (dict(method="draft_model", params={"draft": "./some/dir"}), "not on this app's allow-list"),
    (dict(method="draft_model", params={"draft": "gpt2"}), "draft='gpt2' names a model that is not on"),  # bare hub id
    (dict(method="ead", params={"small": "gpt2"}), "small='gpt2' names a model that is not on"),
    (dict(method="draft_model", params={"draft": "self:99"}), "self:N needs"),
]


@pytest.mark.parametrize("bad, msg", BAD, ids=[m for _, m in BAD])
def test_live_validation_is_one_clear_line(visited, bad, msg):
    app, v = visited  # v has an earlier run that must survive the bad request
    before = dict(v.runs)
    ups = live(app, v, **bad)
    assert len(ups) == 1 and ups[0].done
    assert msg in ups[0].error, ups[0].error
    assert "\n" not in ups[0].error and "Traceback" not in ups[0].error
    assert v.runs == before and len(before) == 1
    assert app.pool.loads == 1


def test_prompt_longer_than_context(tiny):
    lm = tiny("llama")  # 1024 positions
    app = App(AppConfig(models=("t",), max_prompt_chars=100_000), ModelPool(("t",), loader=lambda n: lm))
    ups = list(app.live(Visitor(), "t", "autoregressive", "w3 " * 1100, 8, chat=False))
    assert "exceeds the model's context" in ups[-1].error


def test_model_load_error_is_a_message(tiny):
    def loader(name):
        from labkit.models import ModelLoadError
        raise ModelLoadError(f"cannot load model {name!r}: no such thing")

    app = App(AppConfig(models=("ghost",)), ModelPool(("ghost",), loader=loader))
    ups = list(app.live(Visitor(), "ghost", "autoregressive", "hi", 8))
    assert ups[0].status.startswith("loading model ghost")
    assert "cannot load model 'ghost'" in ups[-1].error


def test_unexpected_error_is_one_line_without_traceback(app, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(Session, "start", boom)
    ups = live(app, Visitor())
    assert ups[-1].error.startswith("internal error (RuntimeError: kaboom)") and "\n" not in ups[-1].error


def test_live_step_scrubs_the_latest_live_run(app):
    v = Visitor()
    assert app.live_step(v, 0) is None  # no run yet
    ups = live(app, v)
    assert ups[-1].steps > 2 and 0 <= ups[-1].shown < ups[-1].steps
    assert app.live_step(v, 1).layout.meta["step"] == 1
    assert app.live_step(v, 10_000).layout.meta["step"] == ups[-1].steps - 1  # out of range: the last one


def test_stop(app):
    v = Visitor()
    gen = app.live(v, "tiny-llama", "autoregressive", PROMPT, 60, chat=False)
    ups = []
    for u in gen:
        ups.append(u)
        if len(ups) == 4:
            assert v.request_stop() == 1
            seen = u.text
    assert ups[-1].status.startswith("stopped")
    # within one round: at most the round in progress when Stop was pressed follows, and it says "stopping…"
    assert all(u.status.startswith("stopping…") for u in ups[4:-1]) and len(ups) <= 6
    assert ups[-1].text.startswith(seen) and len(ups[-1].text.split()) <= len(seen.split()) + 1
    assert not v._active  # the flag is released


def test_stop_compare_within_one_cycle(app):
    v = Visitor()
    ups = []
    for u in app.compare(v, "tiny-llama", ["prompt_lookup", "token_recycling"], PROMPT, 60, chat=False):
        ups.append(u)
        if len(ups) == 3:
            v.request_stop()
    assert ups[-1].status.startswith("stopped")
    streaming = [u for u in ups if u.status.startswith(("generating", "stopping"))]
    assert len(streaming) <= 4 and all(u.status.startswith("stopping…") for u in streaming[3:])


def test_stop_pressed_while_queued(app):
    v = Visitor()
    v.arm()  # the Run click (not queued)
    v.request_stop()  # Stop while the run waits in the queue
    ups = live(app, v)
    assert ups[-1].status == "stopped before it started" and not v.runs
    assert live(app, v)[-1].status.startswith("finished")  # the next run is not stopped


def test_one_run_at_a_time_per_visitor(app):
    v = Visitor()
    gen = app.live(v, "tiny-llama", "autoregressive", PROMPT, 20, chat=False)
    next(gen)
    app.busy_timeout = 0.05
    ups = live(app, v)
    assert "another run of yours is still going" in ups[-1].error
    list(gen)
    assert not live(app, v)[-1].error


def test_sampling_run(app):
    ups = live(app, Visitor(), method="prompt_lookup", mode="sampling", temperature=0.9, top_p=0.9, top_k=5,
               seed=3)
    assert not ups[-1].error and "sampling T=0.9" in ups[-1].status


def test_every_registered_method_runs_from_its_form_defaults(app):
    """The pickers and forms come from the registry: each method with its describe() defaults as the form sends
    them (floats for numbers) must run."""
    v = Visitor()
    for name in methods.REGISTRY:
        form = {p["name"]: (float(p["default"]) if p["type"] == "int" else p["default"])
                for p in methods.info(name)["params"]}
        ups = live(app, v, method=name, params=form, max_new_tokens=6)
        reason = methods.get(name).supports(app.pool.get("tiny-llama"))
        if reason:
            assert "cannot run on" in ups[-1].error
        else:
            assert not ups[-1].error, (name, ups[-1].error)
        assert name in method_label(name) and ("lossless" in method_label(name)) == methods.get(name).lossless


def test_form_values_reuse_one_method_instance(app):
    v = Visitor()
    d = {p["name"]: p["default"] for p in methods.info("token_recycling")["params"]}
    live(app, v, params={"k": float(d["k"]), "nodes": float(d["nodes"])})  # what sliders send
    live(app, v, params={"k": d["k"], "nodes": str(d["nodes"])})
    live(app, v)
    assert len(v.sessions["tiny-llama"]._methods) == 1  # the Token Recycling matrix keeps warming up


def test_visitors_are_isolated_and_share_one_model(app, tiny):
    a, b = Visitor(), Visitor()
    ra = live(app, a, prompt="w5 w6 w7 w5 w6")
    rb = live(app, b, prompt="w9 w8 w9 w8 w9")
    assert app.pool.loads == 1
    assert ra[-1].text != rb[-1].text
    assert len(a.runs) == len(b.runs) == 1
    assert next(iter(a.runs.values())).steps != next(iter(b.runs.values())).steps
    assert a.sessions["tiny-llama"] is not b.sessions["tiny-llama"]
    assert a.sessions["tiny-llama"].lm is b.sessions["tiny-llama"].lm
    ma = a.sessions["tiny-llama"].method("token_recycling")
    mb = b.sessions["tiny-llama"].method("token_recycling")
    assert ma is not mb


def test_concurrent_visitors_get_their_own_results(app, tiny):
    prompts = ["w5 w6 w7 w5 w6", "w9 w8 w9 w8 w9", "w1 w3 w1 w3", "w2 w4 w6 w2 w4 w6"]
    ref = {p: Session(lm=tiny("llama")).run("autoregressive", p, max_new_tokens=20, chat=False).text for p in prompts}
    out = {}

    def client(p, name):
        out[p] = live(app, Visitor(), method=name, prompt=p, max_new_tokens=20)[-1].text

    threads = [threading.Thread(target=client, args=(p, n)) for p, n in
               zip(prompts, ["token_recycling", "prompt_lookup", "autoregressive", "token_recycling"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == ref


# ---- Compare ------------------------------------------------------------------------------------------------

def test_compare_streams_side_by_side_with_verdict(app):
    v = Visitor()
    ups = list(app.compare(v, "tiny-llama", ["prompt_lookup", "token_recycling"], PROMPT, 24, chat=False))
    assert ups[-1].done and not ups[-1].error
    streaming = [u for u in ups if u.columns is not UNCHANGED and not u.done]
    assert len(streaming) > 3
    cols = ups[-1].columns
    assert len(cols) == COMPARE_COLUMNS and [c is None for c in cols] == [False] * 3 + [True] * 2
    assert "autoregressive" in cols[0].title and "baseline" in cols[0].title
    verdict = ups[-1].verdict
    assert verdict.count("✓ identical") == 2 and "speedup" in verdict and "1.00×" in verdict
    assert [r.source for r in v.runs.values()] == ["compare"] * 3
    # the final figure comes with the verdict (the last word) and agrees with it; while the lanes stream,
    # only positions every lane has produced are compared, so identical runs never show "differ"
    final = ups[-1].plot
    assert final is not None and final is not UNCHANGED and final.layout.title.text.startswith("✓ identical")
    plots = [u.plot for u in ups[:-1] if u.plot not in (None, UNCHANGED)]
    assert plots and all(not p.layout.title.text.startswith("✗") for p in plots)
    assert "Expected = tokens per round" in verdict and "expected" in verdict.splitlines()[0]


def test_stopped_compare_marks_lanes_stopped_and_compares_what_both_produced(app):
    v = Visitor()
    ups = []
    for u in app.compare(v, "tiny-llama", ["prompt_lookup", "token_recycling"], PROMPT, 40, chat=False):
        ups.append(u)
        if len(ups) == 4:
            v.request_stop()
    assert ups[-1].done and ups[-1].status.startswith("stopped")
    titles = [c.title for c in ups[-1].columns if c is not None]
    assert all("■ stopped" in t and "✓ done" not in t for t in titles), titles
    assert ups[-1].plot.layout.title.text.startswith("✓ identical so far")


@pytest.mark.parametrize("picked, msg", [
    (["token_recycling"], "pick 2 to 4 methods"),
    ([], "pick 2 to 4 methods"),
    (["token_recycling"] * 2, "picked twice"),
    (["autoregressive", "prompt_lookup", "token_recycling", "draft_model", "x"], "pick 2 to 4"),
    (["prompt_lookup", "nope"], "unknown method 'nope'"),
])
def test_compare_validation(app, picked, msg):
    ups = list(app.compare(Visitor(), "tiny-llama", picked, PROMPT, 8, chat=False))
    assert len(ups) == 1 and msg in ups[0].error


def test_compare_bad_param_of_one_method(app):
    ups = list(app.compare(Visitor(), "tiny-llama", ["prompt_lookup", "token_recycling"], PROMPT, 8,
                           params_by_method={"prompt_lookup": {"draft_len": 0}}, chat=False))
    assert "draft_len=0 is out of range" in ups[-1].error


def test_compare_verdict_explains_a_divergence(tiny):
    """A lossless method whose tokens differ from the baseline's gets the losslessness explainer's report."""
    lm = tiny("llama")
    lab = Session(lm=lm)
    ids = lm.encode(PROMPT, chat=False)
    base = lab.run("autoregressive", PROMPT, max_new_tokens=8, chat=False)
    other = lab.run("prompt_lookup", PROMPT, max_new_tokens=8, chat=False)
    bad_tok = (base.tokens[3] + 1) % 32
    import dataclasses

    forged = list(other.steps)
    # rewrite the run so its 4th token is wrong (as a buggy method would produce)
    flat, k = [], 0
    for s in forged:
        toks = list(s.tokens)
        for j in range(len(toks)):
            if k == 3:
                toks[j] = bad_tok
            k += 1
        flat.append(dataclasses.replace(s, tokens=tuple(toks)))
    lanes = [dict(name="autoregressive", steps=base.steps, cfg=base.config, ids=ids, error=""),
             dict(name="prompt_lookup", steps=flat, cfg=other.config, ids=ids, error="")]
    from labkit.sampling import GREEDY

    md = compare_verdict(lm, lanes, GREEDY, stopped=False)
    assert "✗ differs from token 3" in md and "First divergence" in md
    assert "NOT identical  first divergence at token 3" in md and "float64 sides with" in md


# ---- Trace explorer -----------------------------------------------------------------------------------------

def test_explorer_and_download_round_trip(app):
    v = Visitor()
    live(app, v)
    up = app.explorer(v)
    rec = v.runs[up.selected]
    assert up.choices == list(v.runs) and up.max_step == len(rec.steps) - 1
    assert rec.steps[up.step].nodes  # opens on the last step that drafted a tree
    assert up.view.summary.startswith(f"**Step {rec.steps[up.step].index}**")
    assert len(up.view.decisions) == len(rec.steps[up.step].nodes)
    assert [r[4] for r in up.view.decisions] == [n.status for n in rec.steps[up.step].nodes]
    assert all(r[9] for r in up.view.decisions)  # every decision has its reason
    assert isinstance(up.view.state, dict)
    back = load_trace(up.download)
    assert back.steps == rec.steps and back.config["method"] == "token_recycling"
    # the slider clamps
    assert app.explorer(v, up.selected, 10_000).step == up.max_step
    assert app.explorer(v, up.selected, -5).step == 0
    assert app.explorer(v, up.selected, "x").step == up.max_step
    assert app.explorer(v, "not a run").selected == up.selected


def test_explorer_without_runs():
    up = App(AppConfig()).explorer(Visitor())
    assert up.choices == [] and "no runs yet" in up.message


def test_upload_good_trace(app, tmp_path):
    v = Visitor()
    live(app, v)
    path = app.explorer(v).download
    up = app.upload(Visitor(), path)  # another visitor uploads it
    assert not up.error and up.selected.startswith("1. upload: ") and "steps" in up.message


def _bad_traces(tmp_path, good_text):
    lines = good_text.splitlines()
    header = json.loads(lines[0])
    step = next(e for e in map(json.loads, lines[1:]) if e.get("nodes"))
    cases = {
        "empty": ("", "the file is empty"),
        "not json": ("hello world\n", "not JSON"),
        "foreign json": ('{"name": "something else"}\n', "not a labkit trace header"),
        "json list": ("[1, 2, 3]\n", "not a labkit trace header"),
        "future version": (json.dumps({**header, "version": 99}) + "\n", "schema version 99"),
        "bad event": (lines[0] + "\n" + '{"type": "step", "index": "x", "bogus": 1}\n', "line 2 is not a valid event"),
        "no steps": (lines[0] + "\n", "the trace has no steps"),
        "bad tree": (lines[0] + "\n" + json.dumps({**step, "nodes": [{**n, "parent": 5} for n in step["nodes"]]})
                     + "\n", "parents must come first"),
        "bad path": (lines[0] + "\n" + json.dumps({**step, "accepted": [99]}) + "\n", "points outside the tree"),
    }
    out = []
    for name, (text, msg) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        p.write_text(text, encoding="utf-8")
        out.append((name, p, msg))
    b = tmp_path / "binary.jsonl"
    b.write_bytes(b"\xff\xfe\x00\x01garbage")
    out.append(("binary", b, "not UTF-8"))
    return out


def test_bad_uploads_keep_everything(app, tmp_path):
    v = Visitor()
    live(app, v)
    good = open(app.explorer(v).download, encoding="utf-8").read()
    before_runs, before_sel = dict(v.runs), v.selected
    for name, path, msg in _bad_traces(tmp_path, good):
        up = app.upload(v, str(path))
        assert up.error.startswith("could not read the upload: ") and msg in up.error, (name, up.error)
        assert "\n" not in up.error and "Traceback" not in up.error
        assert v.runs == before_runs and v.selected == before_sel and up.selected == before_sel
        assert up.view.summary  # the current run is still shown
    assert "no file" in app.upload(v, None).error
    assert "cannot open" in app.upload(v, str(tmp_path / "missing.jsonl")).error


def test_upload_too_big_and_truncated(app, tmp_path):
    v = Visitor()
    live(app, v)
    good = open(app.explorer(v).download, encoding="utf-8").read()
    app.config = AppConfig(models=("tiny-llama",), max_upload_mb=0.0001, plot_interval=1e9)
    big = tmp_path / "big.jsonl"
    big.write_text(good)
    assert "traces up to" in app.upload(v, str(big)).error
    app.config = AppConfig(models=("tiny-llama",), plot_interval=1e9)
    cut = tmp_path / "cut.jsonl"
    cut.write_text(good[: len(good) - 40])  # an interrupted run: the last line is cut mid-write
    up = app.upload(v, str(cut))
    assert not up.error and "cut off" in up.message


def test_upload_skips_unknown_event_types(app, tmp_path):
    v = Visitor()
    live(app, v)
    lines = open(app.explorer(v).download, encoding="utf-8").read().splitlines()
    p = tmp_path / "extra.jsonl"
    p.write_text("\n".join(lines[:2] + ['{"type": "martian_frame", "x": 1}'] + lines[2:]) + "\n")
    up = app.upload(v, str(p))
    assert not up.error and "1 event(s)" in up.message


def test_runs_are_capped(app):
    app.config = AppConfig(models=("tiny-llama",), max_runs=2, plot_interval=1e9)
    v = Visitor()
    for _ in range(3):
        live(app, v, max_new_tokens=4)
        app.trace_file(v, v.selected)
    assert list(v.runs) == [k for k in v.runs if not k.startswith("1.")] and len(v.runs) == 2
    files = {Path(app.trace_file(v, k)).name for k in v.runs}
    assert {p.name for p in (app.tmp / v.id).glob("*.jsonl")} == files  # dropped runs' files are gone too


# ---- Bench, Sparsity, config --------------------------------------------------------------------------------

def test_bench_small(app):
    seen = []
    ups = list(app.bench(Visitor(), "tiny-llama", ["prompt_lookup"], ["qa", "rag"], 1, 8,
                         progress=lambda f, d: seen.append(f)))
    assert ups[-1].done and not ups[-1].error, ups[-1].error
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    rows = ups[-1].rows
    assert {(r["category"], r["method"]) for r in rows} == {
        (c, m) for c in ("all", "qa", "rag") for m in ("autoregressive", "prompt_lookup")}
    assert all(r["identical"] == f"{r['questions']}/{r['questions']}" for r in rows)
    assert ups[-1].plot is not None and ups[-1].plot.layout.meta["view"] == "bench_summary"
    assert len(bench_table(rows)[0]) == len(BENCH_HEADERS)


@pytest.mark.parametrize("kw, msg", [
    (dict(names=[]), "at least one method"),
    (dict(names=["nope"]), "unknown method"),
    (dict(categories=[]), "at least one Spec-Bench category"),
    (dict(categories=["poetry"]), "unknown category"),
    (dict(n=0), "out of range"),
    (dict(n=50), "out of range"),
    (dict(max_new_tokens=5000), "out of range"),
    (dict(model="gpt2"), "allow-list"),
])
def test_bench_validation(app, kw, msg):
    args = dict(model="tiny-llama", names=["prompt_lookup"], categories=["qa"], n=1, max_new_tokens=8)
    args.update(kw)
    ups = list(app.bench(Visitor(), **args))
    assert len(ups) == 1 and msg in ups[0].error


def test_sparsity_streams_frames_and_fidelity(app):
    v = Visitor()
    ups = list(app.sparsity(v, "tiny-llama", "h2o", 8, PROMPT, 12, chat=False))
    assert ups[-1].done and not ups[-1].error, ups[-1].error
    assert len(ups) > 3 and all(u.html is not UNCHANGED for u in ups if u.status.startswith("generating"))
    for word in ("attention recall", "KL(dense", "top-1 agreement", "KV read"):
        assert word in ups[-1].metrics
    assert ups[-1].heatmap is not None and ups[-1].timeline is not None and ups[-1].fidelity is not None
    rec = v.runs[v.selected]
    assert rec.source == "sparsity" and rec.config["sparsity"].startswith("h2o(budget=8")
    frames = [e for e in rec.events if not isinstance(e, Step)]
    assert len(frames) == len(rec.steps)
    up = app.explorer(v)
    assert up.view.sparsity is not None  # the explorer shows the step's frame
    back = load_trace(up.download)  # frames go into the downloaded trace
    assert len(back.events) == len(rec.events)
    assert not app.upload(Visitor(), up.download).error
    assert [name for _, name in app.sparsity_policies()][0] == "dense"


@pytest.mark.parametrize("kw, msg", [
    (dict(policy="nope"), "unknown sparsity policy 'nope'"),
    (dict(policy=""), "pick a KV policy"),
    (dict(budget=0), "must be at least 1"),
    (dict(budget="x"), "whole number"),
    (dict(policy="token_select", budget=16), "must be below the budget"),
    (dict(prompt=""), "the prompt is empty"),
    (dict(method="nope"), "unknown method"),
    (dict(model="gpt2"), "allow-list"),
    (dict(policy="razor_attention", params={"compensation": "half"}), "must be one of mean, count, off"),
    (dict(params={"per_head": True}), "per_head"),  # a setting of another policy
])
def test_sparsity_validation(app, kw, msg):
    args = dict(model="tiny-llama", policy="h2o", budget=16, prompt=PROMPT, max_new_tokens=8, chat=False)
    args.update(kw)
    ups = list(app.sparsity(Visitor(), **args))
    assert len(ups) == 1 and msg in ups[0].error, ups[0].error


def test_sparsity_takes_the_policys_settings(app):
    """The Sparsity tab's policy form: every policy's settings but the budget (the tab's slider), and a run with
    RazorAttention's counted compensation records it."""
    from labkit.app import policy_param_layout

    layout = policy_param_layout()
    assert ("razor_attention", "compensation") in [(m, p["name"]) for m, p in layout]
    assert not any(p["name"] == "budget" for _, p in layout)
    v = Visitor()
    ups = list(app.sparsity(v, "tiny-llama", "razor_attention", 8, PROMPT, 6, chat=False,
                            params={"compensation": "count", "sinks": 2}))
    assert ups[-1].done and not ups[-1].error, ups[-1].error
    desc = v.runs[v.selected].config["sparsity"]
    assert "compensation=count" in desc and "sinks=2" in desc and "budget=8" in desc


def test_sparsity_rejects_custom_loop_methods(app):
    custom = [n for n in methods.REGISTRY if methods.get(n).custom_loop]
    if not custom:
        pytest.skip("no custom-loop method is registered")
    ups = list(app.sparsity(Visitor(), "tiny-llama", "h2o", 16, PROMPT, 8, method=custom[0], chat=False))
    assert "runs its own loop" in ups[-1].error


def test_config_from_env_and_allow_list():
    assert AppConfig().models == ("smollm2-135m", "gemma3-270m") and AppConfig().default_model == "smollm2-135m"
    cfg = AppConfig.from_env({"LABKIT_APP_MODELS": " gemma3-270m , /models/x ", "LABKIT_APP_CONCURRENCY": "3"})
    assert cfg.models == ("gemma3-270m", "/models/x") and cfg.default_model == "gemma3-270m" and cfg.concurrency == 3
    assert AppConfig.from_env({}, concurrency=1).concurrency == 1
    with pytest.raises(ValueError, match="must be an integer"):
        AppConfig.from_env({"LABKIT_APP_CONCURRENCY": "many"})
    with pytest.raises(ValueError, match="allow-list is empty"):
        AppConfig(models=(" ",))
    with pytest.raises(ValueError, match="not on the allow-list"):
        AppConfig(models=("a",), default_model="b")


def test_pool_never_trusts_remote_code(monkeypatch):
    seen = {}

    def fake_load(name, **kw):
        seen.update(kw, name=name)
        return object()

    monkeypatch.setattr(config, "load", fake_load)  # the loader ModelPool calls
    pool = ModelPool(("m",))
    pool.get("m")
    pool.get("m")
    assert seen["trust_remote_code"] is False and pool.loads == 1


def test_live_ends_with_expected_and_measured_speedup(app):
    ups = live(app, Visitor())
    assert "expected **×" in ups[-1].metrics and "measured **×" in ups[-1].metrics
    assert all("expected **×" not in u.metrics for u in ups[:-1] if isinstance(u.metrics, str))  # at the end only


def test_live_says_it_waits_while_another_run_has_the_model_alone(app):
    """A run that must wait for the model (another visitor's sparsity capture holds it alone) says so first."""
    v = Visitor()
    list(app.live(v, "tiny-llama", "autoregressive", PROMPT, 2, chat=False))  # loads the model
    release = hold_in_another_thread(v.session(app.pool, "tiny-llama").lm.gate)  # another visitor's capture
    ups = app.live(v, "tiny-llama", "autoregressive", PROMPT, 4, chat=False)
    first = next(ups)
    assert first.status.startswith("waiting for the model: another run is changing how the model computes")
    v.request_stop()  # Stop while waiting: the run ends at once, with nothing
    stopped = list(ups)
    assert stopped[-1].done and stopped[-1].status.startswith("stopped") and stopped[-1].steps == 0
    ups = app.live(v, "tiny-llama", "autoregressive", PROMPT, 4, chat=False)
    assert next(ups).status.startswith("waiting for the model")
    release()
    rest = list(ups)
    assert rest[-1].done and rest[-1].steps > 0 and not rest[-1].error
