"""`labkit bench` on a tiny saved model: Spec-Bench JSONL fields, resume, shard + merge = unsharded, the report,
one metrics function for every method, the memory check. No timed assertions (speed lives in the bench output)."""
import json

import pytest

from labkit import bench
from labkit.cli import main

CATS = "qa,math_reasoning"  # short prompts: they fit the tiny model's 1024-token context


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path_factory.getbasetemp() / "labkit_cache"))


def run_bench(tiny_dir, out, *extra, methods="autoregressive,prompt_lookup:sizing=off,token_recycling"):
    argv = ["bench", "--model", tiny_dir, "--methods", methods, "--n", "2", "--categories", CATS,
            "--max-new-tokens", "12", "--warmup", "1", "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 0
    return bench.read_records(out)


def key(r):
    return (r["question_id"], r["method"])


def test_jsonl_has_spec_bench_fields_and_labkit_metrics(tiny_dir, tmp_path):
    recs = run_bench(tiny_dir, tmp_path / "b.jsonl", "--trace-overhead", "token_recycling")
    methods = {r["method"] for r in recs}
    assert methods == {"generate", "generate+pld", "autoregressive", "prompt_lookup:sizing=off", "token_recycling",
                       "token_recycling+trace"}
    assert len(recs) == 4 * len(methods)  # 2 questions x 2 categories, one line per method
    for r in recs:
        assert {"question_id", "category", "model_id", "choices", "tokens", "labkit"} <= set(r)
        c = r["choices"][0]
        assert {"turns", "new_tokens", "wall_time", "accept_lengths", "decoding_steps"} <= set(c)
        assert c["new_tokens"] == [len(r["tokens"])] and c["decoding_steps"] == [len(c["accept_lengths"])]
        assert c["wall_time"][0] > 0 and r["labkit"]["new_tokens"] == len(r["tokens"])
        if r["method"] != "generate":
            assert sum(c["accept_lengths"]) == len(r["tokens"]) - 1  # the prefill's token is not a decode round
    by = {key(r): r for r in recs}
    for r in recs:  # lossless in fp32: every method reproduces model.generate
        assert r["tokens"] == by[(r["question_id"], "generate")]["tokens"]
    meta = bench.read_meta(tmp_path / "b.jsonl")
    assert meta[0]["phase"] == "start" and meta[0]["latency_curve"]["tokens"][0] == 1
    # methods ran on the fast path; the generate rows on the stock model; both curves are in the report
    assert meta[0]["backend"] == "fast" and meta[0]["latency_curve_stock"]["backend"] == "stock"
    report = (tmp_path / "b.md").read_text()
    assert "| fast ms |" in report and "| stock ms |" in report
    assert meta[-1]["phase"] == "end" and "token_recycling" in meta[-1]["state_bytes"]


def test_resume_skips_done_questions(tiny_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    first = run_bench(tiny_dir, out)
    again = run_bench(tiny_dir, out)
    assert [key(r) for r in again] == [key(r) for r in first]  # nothing re-run
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-3]) + lines[-3][: len(lines[-3]) // 2])  # interrupted mid-line
    resumed = run_bench(tiny_dir, out)
    assert sorted(map(key, resumed)) == sorted(map(key, first))
    assert out.read_text().endswith("\n")


def test_shards_merge_to_the_unsharded_run(tiny_dir, tmp_path):
    methods = "autoregressive,prompt_lookup:sizing=off,token_recycling:sizing=off"
    whole = run_bench(tiny_dir, tmp_path / "all.jsonl", methods=methods)
    parts = [run_bench(tiny_dir, tmp_path / f"s{i}.jsonl", "--shard", f"{i}/2", methods=methods) for i in range(2)]
    qs = [{r["question_id"] for r in p} for p in parts]
    assert qs[0] and qs[1] and not qs[0] & qs[1]
    assert main(["bench", "merge", str(tmp_path / "s0.jsonl"), str(tmp_path / "s1.jsonl"),
                 "--out", str(tmp_path / "merged.jsonl")]) == 0
    merged = bench.read_records(tmp_path / "merged.jsonl")

    def essence(rs, stateless=True):
        return sorted((r["question_id"], r["method"], tuple(r["tokens"]),
                       tuple(r["choices"][0]["accept_lengths"]) if stateless else ()) for r in rs)

    stateless = [r for r in whole if not r["method"].startswith("token_recycling")]
    assert essence([r for r in merged if not r["method"].startswith("token_recycling")]) == essence(stateless)
    assert essence(merged, False) == essence(whole, False)  # Token Recycling's matrix differs, its output not
    assert len(bench.read_meta(tmp_path / "merged.jsonl")) == 4  # start and end of each shard
    rows = bench.table(merged)
    assert {(r["method"], r["category"]) for r in rows} == {(r["method"], r["category"]) for r in bench.table(whole)}


def test_report_is_self_contained(tiny_dir, tmp_path):
    out = tmp_path / "rep.jsonl"
    run_bench(tiny_dir, out)
    md = (tmp_path / "rep.md").read_text()
    page = (tmp_path / "rep.html").read_text()
    assert "| overall | token_recycling |" in md and "speedup vs AR" in md and "Latency curve" in md
    assert "Plotly" in page and "<table>" in page
    assert 'src="https://cdn.plot.ly' not in page and "<script src=" not in page  # plotly.js inlined
    split = list((tmp_path / "rep.spec_bench").glob("*.jsonl"))
    assert len(split) == 5  # generate, generate+pld, autoregressive, prompt lookup, token recycling
    assert main(["bench", "report", str(out)]) == 0


def _speed_py(path):
    """What Spec-Bench's evaluation/speed.py computes per file: the mean over questions of tokens / wall time."""
    speeds = []
    for line in path.read_text().splitlines():
        c = json.loads(line)["choices"][0]
        speeds.append(sum(c["new_tokens"]) / sum(c["wall_time"]))
    return sum(speeds) / len(speeds)


def test_spec_bench_files_reproduce_the_reports_speed_py_column(tiny_dir, tmp_path):
    out = tmp_path / "sb.jsonl"
    run_bench(tiny_dir, out)
    files = {json.loads(p.read_text().splitlines()[0])["method"]: p for p in (tmp_path / "sb.spec_bench").glob("*")}
    row = next(r for r in bench.table(bench.read_records(out))
               if r["method"] == "token_recycling" and r["category"] == "overall")
    want = _speed_py(files["token_recycling"]) / _speed_py(files["autoregressive"])
    assert row["speedup"]["spec_bench"] == pytest.approx(want)
    ids = [json.loads(line)["answer_id"] for p in files.values() for line in p.read_text().splitlines()]
    assert len(set(ids)) == len(ids)


def test_one_metrics_function_for_all(tiny_dir, tmp_path, monkeypatch):
    recs = run_bench(tiny_dir, tmp_path / "m.jsonl")
    seen = []
    real = bench.summarize

    def spy(records, t_plain=None):
        seen.extend({r["method"] for r in records})
        return real(records, t_plain)

    monkeypatch.setattr(bench.records, "summarize", spy)  # the function bench.table calls
    rows = bench.table(recs)
    assert {"generate", "autoregressive", "token_recycling"} <= set(seen)
    base = next(r for r in rows if r["method"] == "autoregressive" and r["category"] == "overall")
    assert base["speedup"]["tokens_per_s"] == pytest.approx(1.0) and base["mean_accept_len"] == pytest.approx(1.0)
    assert base["identical_vs_generate"] == (4, 4)


def test_summarize_on_hand_made_records():
    def rec(qid, method, tokens, wall, accepts):
        return {"question_id": qid, "method": method, "bench_category": "qa", "tokens": list(range(tokens)),
                "choices": [{"new_tokens": [tokens], "wall_time": [wall], "accept_lengths": accepts}],
                "labkit": {"per_depth": [[1, 0.5, 4]], "decode_tokens": tokens - 1, "decode_wall": wall - 0.1,
                           "ideal_decode_seconds": 0.1 * len(accepts), "nodes_per_round": 2.0,
                           "sizing_nodes": {"2": len(accepts)}}}

    rs = [rec(1, "x", 11, 1.0, [2, 3, 1, 4]), rec(2, "x", 9, 2.0, [1, 1, 2, 2, 2])]
    s = bench.summarize(rs, t_plain=0.05)
    assert s["tokens_per_s"] == pytest.approx(20 / 3) and s["mean_accept_len"] == pytest.approx(18 / 9)
    assert s["per_depth"] == {1: 0.5} and s["sizing_mode"] == 2
    assert s["ideal_speedup"] == pytest.approx(18 / 0.9 * 0.05)


def test_bad_shard_and_specs(tiny_dir, capsys):
    assert main(["bench", "--model", tiny_dir, "--shard", "3/2"]) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(["bench", "--methods", "token_recycling:nodes=999"]) == 2
    assert main(["bench", "--methods", "autoregressive", "--trace-overhead", "token_recycling"]) == 2


def test_memory_check(tiny_dir, tmp_path):
    out = tmp_path / "mem.json"
    assert main(["bench", "memory", "--model", tiny_dir, "--methods", "token_recycling", "--tokens", "60",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["autoregressive", "token_recycling"]
    assert all(r["tokens"] == 60 for r in rows)  # EOS ignored: exactly the requested length
    assert rows[1]["state_bytes"] == 32 * 8 * 8  # the tiny vocab x k int64 matrix
    assert rows[1]["kv_end"] > rows[1]["kv_start"]


def test_device_map_model_decodes(tiny_dir):
    """A model loaded with device_map (accelerate's dispatch; here everything on the CPU) runs every method."""
    from labkit import engine, methods
    from labkit.check import greedy_reference
    from labkit.models import load

    lm = load(tiny_dir, device_map="cpu")
    ids = [3, 5, 7, 3, 5, 7, 3]
    ref = greedy_reference(lm, ids, 16)
    for name in ("autoregressive", "prompt_lookup", "token_recycling"):
        got = [t for s in engine.decode(lm, methods.create(name, lm), ids, max_new_tokens=16) for t in s.tokens]
        assert got == ref, name


def test_bench_run_is_the_command_as_a_function(tiny_dir, tmp_path):
    rows = bench.run(["autoregressive", "prompt_lookup"], model=tiny_dir, n=1, categories=["qa"], max_new_tokens=8,
                     warmup=0, no_generate=True, out=tmp_path / "f.jsonl")
    assert {(r["method"], r["category"]) for r in rows} == {(m, c) for m in ("autoregressive", "prompt_lookup")
                                                            for c in ("qa", "overall")}
    assert (tmp_path / "f.md").exists()
    with pytest.raises(TypeError, match="unknown options bogus"):
        bench.run(model=tiny_dir, bogus=1)


def test_sparsity_bench_runs_a_policys_settings_as_rows(tiny_dir, capsys):
    """`--sparsity name:param=value` is a row of its own, labelled by its spec; a bad setting is one line."""
    assert main(["bench", "--model", tiny_dir, "--sparsity", "razor_attention,razor_attention:compensation=count",
                 "--budgets", "8", "--n", "1", "--categories", "qa", "--max-new-tokens", "4", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("razor_attention")]
    assert rows == ["razor_attention", "razor_attention:compensation=count"]
    assert main(["bench", "--model", tiny_dir, "--sparsity", "razor_attention:compensation=half"]) == 2
    assert "compensation='half' must be one of mean, count, off" in capsys.readouterr().err
