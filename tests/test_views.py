"""Views are tested on their data: the figures' traces and values, never on HTML."""
import re
from dataclasses import dataclass

import plotly.graph_objects as go
import pytest

from labkit import methods, metrics, stream, tree, views
from labkit.trace import ACCEPTED, NOT_REACHED, REJECTED, Node, Step, Timing


def node(tok, parent, depth, status, text=None, **kw):
    return Node(tok, parent, depth, status, text if text is not None else f" t{tok}", **kw)


def mk(index, nodes, accepted, tokens, *, kind="decode", bonus_text=None, kv_len=20, state=None, total=1.0,
       root=100, text=None):
    tokens = tuple(tokens)
    btext = bonus_text if bonus_text is not None else f" t{tokens[-1]}"
    path_text = "".join(nodes[i].text for i in accepted)
    return Step(index=index, kind=kind, root=root, root_text=" root", nodes=tuple(nodes), accepted=tuple(accepted),
                tokens=tokens, text=text if text is not None else path_text + btext, bonus=tokens[-1],
                bonus_text=btext, bonus_how="argmax", target_forwards=1, draft_forwards=0,
                timing=Timing(draft=0.1 * total, verify=0.7 * total, accept=0.05 * total, commit=0.05 * total,
                              total=total), kv_len=kv_len, state=state or {})


# A tree: two children of the root (0 accepted, 1 rejected); 0 has children 2 (accepted) and 3 (not reached);
# 2 has child 4 (rejected); 1 has child 5 (not reached). Path [0, 2], bonus 9.
TREE = [node(1, -1, 1, ACCEPTED, reason="matches the target argmax", target_prob=0.6),
        node(2, -1, 1, NOT_REACHED, reason="a sibling was accepted first"),
        node(3, 0, 2, ACCEPTED, target_prob=0.5, draft_prob=0.4, accept_prob=1.0, draw=0.3),
        node(4, 0, 2, NOT_REACHED),
        node(5, 2, 3, REJECTED, reason="argmax was ' t9'"),
        node(6, 1, 2, NOT_REACHED, reason="parent not accepted")]
STEP = mk(3, TREE, [0, 2], [1, 3, 9], kv_len=43)


def marker_traces(fig):
    return [t for t in fig.data if t.type == "scatter" and t.mode and "markers" in t.mode]


def test_draft_tree_one_marker_per_node_plus_root_and_bonus():
    fig = views.draft_tree(STEP)
    assert isinstance(fig, go.Figure)
    markers = marker_traces(fig)
    assert sum(len(t.x) for t in markers) == len(TREE) + 2
    by_name = {t.name: t for t in markers}
    acc = by_name[views.STATUS_LABELS[ACCEPTED]]
    rej = by_name[views.STATUS_LABELS[REJECTED]]
    nr = by_name[views.STATUS_LABELS[NOT_REACHED]]
    assert sorted(acc.customdata) == [0, 2] and list(rej.customdata) == [4] and sorted(nr.customdata) == [1, 3, 5]
    assert acc.marker.color == views.STATUS_COLORS[ACCEPTED] and rej.marker.color == views.STATUS_COLORS[REJECTED]
    assert nr.marker.color == views.STATUS_COLORS[NOT_REACHED]
    assert by_name[views.STATUS_LABELS["bonus"]].text == ("␣t9",)
    # x = depth for every node
    pos = views.tree_layout(STEP)
    for t in (acc, rej, nr):
        for x, i in zip(t.x, t.customdata):
            assert x == TREE[i].depth and pos[i][0] == x
    # hover has the probabilities and the draw
    hov = acc.hovertext[list(acc.customdata).index(2)]
    assert "q (draft prob) = 0.4000" in hov and "p (target prob) = 0.5000" in hov and "u = 0.3000" in hov


def test_draft_tree_bold_accepted_path_root_to_bonus():
    fig = views.draft_tree(STEP)
    path = next(t for t in fig.data if t.name == "accepted path")
    edges = next(t for t in fig.data if t.name == "edges")
    assert path.line.width > edges.line.width
    pos = views.tree_layout(STEP)
    assert list(zip(path.x, path.y)) == [pos["root"], pos[0], pos[2], pos["bonus"]]
    assert pos["bonus"][0] == 3  # one past the accepted depth
    # thin edges: one segment per node
    assert len([x for x in edges.x if x is None]) == len(TREE)


def test_draft_tree_prefill_and_empty_rounds():
    pre = mk(0, [], [], [7], kind="prefill")
    fig = views.draft_tree(pre)
    assert sum(len(t.x) for t in marker_traces(fig)) == 2  # root and the first token
    fig = views.draft_tree(mk(1, [], [], [8]))
    assert sum(len(t.x) for t in marker_traces(fig)) == 2
    with pytest.raises(TypeError):
        views.draft_tree("not a step")


def test_tree_mask_equals_ancestor_mask_with_position_ids():
    fig = views.tree_mask(STEP)
    heat = next(t for t in fig.data if t.type == "heatmap")
    parents = [n.parent for n in TREE]
    assert [list(r) for r in heat.z] == tree.ancestor_mask(parents).int().tolist()
    start = STEP.kv_len - 1 - len(STEP.accepted)
    assert fig.layout.meta["position_ids"] == tree.position_ids(parents, start)
    ticks = fig.layout.xaxis2.ticktext
    assert len(ticks) == len(TREE) + 1 and "root" in ticks[0] and f"@{start}" in ticks[0]
    assert f"@{start + 3}" in ticks[5]  # node 4 sits at depth 3
    # the tree is drawn next to it
    assert sum(len(t.x) for t in marker_traces(fig)) == len(TREE) + 2


def test_kv_compaction_keeps_root_and_path():
    fig = views.kv_compaction(STEP)
    assert fig.layout.meta["kept"] == [0, 1, 3] and fig.layout.meta["gathered"] is True
    chain = mk(4, [node(1, -1, 1, ACCEPTED), node(2, 0, 2, REJECTED)], [0], [1, 5])
    assert views.kv_compaction(chain).layout.meta["gathered"] is False


def steps_run():
    return [mk(0, [], [], [5], kind="prefill"),
            mk(1, [node(1, -1, 1, ACCEPTED, " a"), node(2, 0, 2, ACCEPTED, " b"), node(3, 1, 3, REJECTED, " c")],
               [0, 1], [1, 2, 9]),
            mk(2, [node(1, -1, 1, REJECTED), node(2, -1, 1, REJECTED), node(4, 0, 2, NOT_REACHED)], [], [7]),
            mk(3, [], [], [8], text="\nnew line", bonus_text="\nnew line"),
            mk(4, [node(1, -1, 1, ACCEPTED, " d")], [0], [1, 6])]


@dataclass
class Frame:  # a foreign event type, e.g. a sparsity frame
    layer: int = 0


def test_acceptance_stats_values_equal_metrics_compute():
    steps = steps_run()
    m = metrics.compute(steps)
    fig = views.acceptance_stats(steps + [Frame()])  # non-Step events are skipped
    per_depth, hist, per_round, rolling, phases = fig.data
    assert list(per_depth.x) == [d for d, _, _ in m.per_depth]
    assert list(per_depth.y) == pytest.approx([r for _, r, _ in m.per_depth])
    assert list(hist.y) == list(m.accept_hist)
    assert list(per_round.y) == [3, 1, 1, 2]
    assert list(phases.x)[:4] == ["draft", "verify", "accept", "commit"]
    assert list(phases.y)[:4] == pytest.approx([dict(m.phase)[k] for k in views.PHASES])
    assert fig.layout.meta["mean_accept_len"] == pytest.approx(m.mean_accept_len)
    assert views.acceptance_stats([]).layout.meta["new_tokens"] == 0


def test_acceptance_stats_marks_run_boundaries():
    steps = steps_run() + steps_run()
    fig = views.acceptance_stats(steps)
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].x0 == pytest.approx(4.5)
    assert views.rolling_mean([1, 3, 5, 7], 2) == [1, 2, 4, 6]


def test_token_stream_provenance_and_hover():
    steps = steps_run()
    fig = views.token_stream(steps)
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    spans = stream.spans(steps)
    draft = bars[views.PROVENANCE_LABELS[stream.DRAFT]]
    bonus = bars[views.PROVENANCE_LABELS[stream.BONUS]]
    assert [c[0] for c in draft.customdata] == [s.step for s in spans if s.provenance == stream.DRAFT] == [1, 1, 4]
    assert len(bonus.x) >= sum(1 for s in spans if s.provenance == stream.BONUS)
    assert draft.marker.color == views.PROVENANCE_COLORS[stream.DRAFT]
    assert "from step 1" in draft.hovertext[0]
    assert "mean acceptance length" in fig.layout.annotations[0].text  # the legend says how it is counted
    assert fig.layout.meta["mean_accept_len"] == pytest.approx(metrics.compute(steps).mean_accept_len)
    # newline inside a token starts a new line
    assert max(max(t.y) for t in bars.values() if len(t.y)) >= 1
    ar = views.token_stream(steps, autoregressive=True)
    names = {t.name: len(t.x) for t in ar.data if t.type == "bar"}
    assert names[views.PROVENANCE_LABELS[stream.BONUS]] == 0 and names[views.PROVENANCE_LABELS[stream.AUTOREGRESSIVE]] > 0


def test_token_stream_html_spans_colours_titles_and_escaping():
    steps = steps_run() + [mk(5, [], [], [11], bonus_text="<b>&", text="<b>&")]
    out = views.token_stream_html(steps + [Frame()])
    spans = stream.spans(steps)
    assert out.count('<span class="lk-') == len(spans)
    assert views.PROVENANCE_COLORS[stream.DRAFT] in out and 'title="accepted draft token · step 1' in out
    assert "&lt;b&gt;&amp;" in out and "<b>&" not in out.replace("<b>" + f"{metrics.compute(steps).mean_accept_len:.2f}", "")
    assert "mean acceptance length" in out and "http" not in out


def test_side_by_side_identical_verdict_and_divergence():
    a = steps_run()
    b = [mk(0, [], [], [5], kind="prefill")] + [mk(i, [], [], [t]) for i, t in enumerate([1, 2, 9, 7, 8, 1, 6], 1)]
    fig = views.side_by_side({"spec": a, "ar": b})
    assert fig.layout.meta["identical"] is True and fig.layout.title.text.startswith("✓")
    c = [mk(0, [], [], [5], kind="prefill")] + [mk(i, [], [], [t]) for i, t in enumerate([1, 2, 4, 7, 8, 1, 6], 1)]
    fig = views.side_by_side({"spec": a, "ar": b, "other": c})
    assert fig.layout.meta["identical"] is False
    assert fig.layout.meta["first_divergence"] == {"spec": None, "ar": None, "other": 3}
    assert "other at position 3" in fig.layout.title.text
    # aligned by output position: one marker per token per method
    strips = [t for t in fig.data if t.type == "scatter" and t.name in ("spec", "ar", "other") and t.mode == "markers"]
    assert [len(t.x) for t in strips] == [8, 8, 8]
    passes = next(t for t in fig.data if t.type == "bar")  # counted, not timed
    assert list(passes.y) == [metrics.compute(s).target_forwards for s in (a, b, c)]
    assert "tok/s (one wall-clock run)" in passes.text[0] and "curve predicts" not in passes.text[0]
    from labkit import sizing
    flat = sizing.LatencyCurve(tokens=(1, 81), seconds=(0.01, 0.01))
    labelled = views.side_by_side({"spec": a, "ar": b}, curve=flat)
    assert "curve predicts ×" in next(t for t in labelled.data if t.type == "bar").text[0]
    shorter = views.compare_outputs({"a": a, "b": a[:-1]})
    assert shorter["identical"] is False and shorter["first_divergence"]["b"] == 6


def tr_step():
    nodes = [node(11, -1, 1, REJECTED, " x"), node(12, -1, 1, ACCEPTED, " y"), node(13, 1, 2, REJECTED, " z")]
    state = {"template_nodes": 3, "drafted": 3, "rows_read": {"100": [11, 12, -1], "12": [13, 40, -1]},
             "rows_updated": 4, "rows_changed": 2, "matrix_rows_known": 17}
    return mk(5, nodes, [1], [12, 40], state=state)


def test_method_state_token_recycling_rows():
    s = tr_step()
    fig = views.method_state(s)  # detected from the state's keys
    assert fig.layout.meta["method"] == "token_recycling"
    heat = fig.data[0]
    assert fig.layout.meta["rows"] == [100, 12]  # the root's row first
    # cell codes: rejected=3, accepted=4, unknown=0, bonus=5
    assert [list(r) for r in heat.z] == [[3, 4, 0], [3, 5, 0]]
    assert heat.text[0][1] == "␣y" and heat.text[1][1] == "␣t40"
    named = views.method_state(s, "token_recycling", token_text=lambda t: f"<{t}>")
    assert named.data[0].text[1][0] == "␣z"
    s2 = mk(5, s.nodes, [1], [12, 41], state={**s.state, "rows_read": {"100": [11, 12, 77]}})
    assert views.method_state(s2, token_text=lambda t: f"<{t}>").data[0].text[0][2] == "&lt;77&gt;"
    assert views.method_state(s2).data[0].text[0][2] == "#77"
    assert "17 rows known" in fig.layout.title.text


def test_method_state_aded_rows_and_puct_terms():
    # root context (7, 100); node 0 (' t11') accepted, its child 1 (' t12') rejected, node 2 (' t13') not reached
    nodes = [node(11, -1, 1, ACCEPTED), node(12, 0, 2, REJECTED), node(13, -1, 1, NOT_REACHED)]
    state = {"rows": {"7,100": ["tri", [11, 0.6], [13, 0.3], [14, 0.1]], "100,11": ["bi", [12, 0.9]]},
             "branches": [{"p": 0.6, "q": 0.6, "u": 0.3}, {"p": 0.9, "q": 0.2, "u": 0.45},
                          {"p": 0.3, "q": 0.3, "u": 0.15}],
             "simulations": 3, "rows_updated": 4, "tested": 2, "accepted_transitions": 1}
    fig = views.method_state(mk(4, nodes, [0], [11, 40], state=state))  # detected from the state's keys
    assert fig.layout.meta["method"] == "aded" and fig.layout.meta["contexts"] == ["7,100", "100,11"]
    heat = next(t for t in fig.data if t.type == "heatmap")
    # codes: stored 0, not reached 1, rejected 2, accepted 3; short rows padded with None
    assert [list(r) for r in heat.z] == [[3, 1, 0], [2, None, None]]
    assert heat.text[0][0] == "␣t11<br>0.60" and list(heat.y) == ["#7 ␣root (tri)", "␣root ␣t11 (bi)"]
    bars = {t.name: list(t.y) for t in fig.data if t.type == "bar"}
    assert bars == {"P: matrix probability": [0.6, 0.9, 0.3], "Q: observed acceptance": [0.6, 0.2, 0.3],
                    "U: exploration bonus": [0.3, 0.45, 0.15]}
    assert "2 rows read (1 tri-gram, 1 bigram) in 3 simulations for 3 nodes" in fig.layout.title.text
    assert "1/2 tested transitions accepted" in fig.layout.title.text


def test_method_state_lookahead_window_and_pool():
    # pool trie: n-gram (11, 12) -> nodes 0, 1; window 2 columns x 2 levels: trunk nodes 2, 3, diagonals 4, 5
    nodes = [node(11, -1, 1, ACCEPTED), node(12, 0, 2, REJECTED), node(21, -1, 1, NOT_REACHED),
             node(22, 2, 2, NOT_REACHED), node(31, 2, 2, NOT_REACHED), node(32, 3, 3, NOT_REACHED)]
    state = {"window": [[21, 22], [31, 32]], "pool_size": 5, "candidates": [[11, 12], [11, 40, 41]],
             "pool_nodes": 2, "window_nodes": [[2, 3], [4, 5]], "won": "pool[0]", "harvested": 2}
    fig = views.method_state(mk(6, nodes, [0], [11, 40], state=state))
    assert fig.layout.meta["method"] == "lookahead" and list(fig.layout.meta["hits"]) == [1, 1]
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert [list(r) for r in heat.text] == [["␣t21", "␣t22"], ["␣t31", "␣t32"]]
    assert [list(r) for r in heat.z] == [[0, 0], [0, 0]]
    table = next(t for t in fig.data if t.type == "table")
    assert list(table.cells.values[1]) == ["1 / 2", "1 / 3"]
    assert "won: pool[0]" in fig.layout.title.text


def test_method_state_swift_skip_sets():
    state = {"skip": [1, 3], "skipped": 2, "layers": 5, "phase": "search", "skip_acceptance": 0.5,
             "search": {"candidate": [1, 2], "candidate_match": 0.7, "current_match": 0.4, "adopted": True}}
    fig = views.method_state(mk(2, [], [], [3], state=state))
    assert fig.layout.meta["method"] == "swift"
    assert [list(r) for r in fig.layout.meta["skip"]] == [[0, 1, 0, 1, 0], [0, 1, 1, 0, 0]]
    assert list(fig.data[0].y) == ["draft uses", "candidate (adopted)"]
    sub = {**state, "granularity": "sublayer", "units": 6, "layers": 3}  # units 1, 3: the MLPs of layers 0, 1
    fig = views.method_state(mk(2, [], [], [3], state=sub))
    assert list(fig.data[0].y) == ["draft uses: attention", "draft uses: MLP", "candidate (adopted): attention",
                                   "candidate (adopted): MLP"]
    assert [list(r) for r in fig.data[0].z] == [[0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert list(fig.data[0].x) == [0, 1, 2]


def test_method_state_generic_fallback_and_registry():
    s = mk(2, [], [], [3], state={"pool": [[1, 2], [3, 4]], "window": 4, "note": "n-gram pool"})
    fig = views.method_state(s, "lookahead_like")
    assert fig.layout.meta["method"] is None
    table = next(t for t in fig.data if t.type == "table")
    assert list(table.cells.values[0]) == ["window", "note"]
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert [list(r) for r in heat.z] == [[1, 2], [3, 4]]
    called = []
    views.register_state_view("toy", lambda step, token_text=None: called.append(step.index) or go.Figure())
    try:
        views.method_state(s, "toy")
        assert called == [2]
    finally:
        views.STATE_VIEWS.pop("toy")
    assert "token_recycling" in views.STATE_VIEWS


def test_latency_curve_median_and_curves():
    fig = views.latency_curve([(1, 0.010), (1, 0.012), (1, 0.011), (8, 0.02), (64, 0.08)])
    line = next(t for t in fig.data if t.mode == "lines+markers")
    assert list(line.x) == [1, 8, 64] and list(line.y) == pytest.approx([11, 20, 80])
    assert list(line.customdata) == pytest.approx([1, 20 / 11, 80 / 11])
    two = views.latency_curve({"chain": [(1, 0.01), (2, 0.01)], "tree": [(1, 0.01), (2, 0.02)]})
    assert [t.name for t in two.data] == ["chain", "tree"]


def test_rejection_demo_correct_rule_matches_p_buggy_rule_does_not():
    p, q = views.TOY_P, views.TOY_Q
    ok = views.simulate_rejection(p, q, 4000, seed=1)
    bug = views.simulate_rejection(p, q, 4000, seed=1, rule="resample_p")
    assert sum(ok) == sum(bug) == 4000
    assert views.chi_square(ok, p)[1] > 1e-3
    assert views.chi_square(bug, p)[1] < 1e-6
    stat, pv = views.chi_square([50, 50], [0.5, 0.5])
    assert stat == 0 and pv == pytest.approx(1.0)
    fig = views.rejection_demo(n=2000)
    assert [t.name.split(":")[0] for t in fig.data][:2] == ["p", "q"]


def test_simulate_siblings_rules_keep_p_and_rank_acceptance():
    """k candidates for one position: every fair rule emits p; without replacement accepts most, i.i.d. siblings
    least; K-SEQ matches its closed form; the bug (drawn without replacement, q not updated) is caught."""
    import torch

    from labkit.accept import kseq_accept_prob
    p, q = views.TOY_P, views.TOY_Q
    n = 3000
    runs = {r: views.simulate_siblings(p, q, 3, n, rule=r, seed=2) for r in views.SIBLING_RULES}
    for r in ("iid", "without_replacement", "kseq"):
        assert sum(runs[r]["counts"]) == n
        assert views.chi_square(runs[r]["counts"], p)[1] > 1e-3, r
    assert views.chi_square(runs["no_q_update"]["counts"], p)[1] < 1e-6
    assert runs["without_replacement"]["distinct"] == 3.0 and runs["iid"]["distinct"] < 2.6
    assert runs["without_replacement"]["accepted"] > runs["kseq"]["accepted"] > runs["iid"]["accepted"]
    exact = kseq_accept_prob(torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64), 3)
    assert abs(runs["kseq"]["accepted"] - exact) < 4 * (exact * (1 - exact) / n) ** 0.5
    one = views.simulate_siblings(p, q, 1, n, rule="iid", seed=3)["accepted"]
    assert abs(one - 0.5) < 4 * (0.25 / n) ** 0.5  # sum(min(p, q)) = 0.5 for the toy pair
    with pytest.raises(ValueError):
        views.simulate_siblings(p, q, 2, 10, rule="nope")


def test_siblings_demo_meta():
    fig = views.siblings_demo(ks=(1, 2), n=400, k_shown=2)
    m = fig.layout.meta
    assert m["ks"] == [1, 2] and m["single_draft"] == pytest.approx(0.5)
    assert set(m["accepted"]) == {"iid", "without_replacement", "kseq"}
    assert m["distinct"]["without_replacement"] == [1.0, 2.0]
    assert m["kseq_exact"][0] == pytest.approx(0.5)
    assert set(m["chi2"]) == {"iid", "without_replacement", "kseq", "no_q_update"}
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 6 and sum(bars[2].y) == pytest.approx(1.0)


def test_state_timeline_numbers_dicts_nested_and_gaps():
    steps = [mk(0, [], [], [5], kind="prefill", state={"exit": 3}),
             mk(1, [], [], [6], state={"exit": 29, "alpha": {"15": 0.2, "29": 0.6}, "search": {"m": 0.5}}),
             mk(2, [], [], [7], state={"exit": 15, "alpha": {"15": 0.3, "29": 0.7}, "phase": "frozen"}),
             mk(3, [], [], [8], state={"alpha": {"15": 0.4}, "flag": True})]
    fig = views.state_timeline(steps, ["exit", "alpha", "search.m", "phase", "flag"])
    series = fig.layout.meta["series"]
    assert fig.layout.meta["steps"] == [1, 2, 3]  # decode rounds only
    assert series["exit"] == [29.0, 15.0, None]
    assert series["alpha[15]"] == [0.2, 0.3, 0.4] and series["alpha[29]"] == [0.6, 0.7, None]
    assert series["search.m"] == [0.5, None, None]
    assert "phase" not in series and "flag" not in series  # strings and booleans are not plotted
    assert [t.name for t in fig.data] == list(series)


def test_bench_summary_from_table_rows():
    def row(method, cat, cpu, wall, mal):
        return {"method": method, "category": cat, "mean_accept_len": mal,
                "speedup": {"cpu": cpu, "tokens_per_s": wall}}

    rows = [row("generate", "qa", 1.02, 0.9, 1.0), row("autoregressive", "qa", 1.0, 1.0, 1.0),
            row("prompt_lookup", "qa", 0.8, 0.7, 1.2), row("prompt_lookup", "overall", 0.85, 0.75, 1.3),
            row("autoregressive", "overall", 1.0, 1.0, 1.0), row("prompt_lookup+trace", "qa", 0.1, 0.1, 1.2)]
    fig = views.bench_summary(rows)
    m = fig.layout.meta
    assert m["categories"] == ["qa", "overall"]
    assert m["speedup"] == {"generate": [1.02, None], "prompt_lookup": [0.8, 0.85]}
    assert m["mean_accept_len"] == {"prompt_lookup": [1.2, 1.3]}  # generate has no acceptance panel
    assert views.bench_summary(rows, clock="wall").layout.meta["speedup"]["prompt_lookup"] == [0.7, 0.75]
    with pytest.raises(ValueError):
        views.bench_summary(rows, clock="gpu")


def test_session_warmup_reads_rows_known():
    run1 = [mk(0, [], [], [5], kind="prefill"), tr_step()]
    fig = views.session_warmup([run1, run1])
    assert fig.layout.meta["rows_known"] == [17, 17]
    assert fig.layout.meta["mean_accept_len"] == pytest.approx([2.0, 2.0])


def test_figures_render_offline():
    html = views.to_html(views.draft_tree(STEP))
    # plotly.js is inlined (megabytes), no script is loaded from the network
    assert len(html) > 1_000_000 and not re.search(r"<script[^>]*src=[\"']?https?:", html)


def test_views_on_a_real_run(tiny):
    from labkit import Session

    lab = Session(lm=tiny("llama"))
    runs = lab.compare(["autoregressive", "token_recycling", "prompt_lookup"], [1, 2, 3, 1, 2, 3, 1, 2],
                       max_new_tokens=24)
    fig = views.side_by_side(runs)
    assert fig.layout.meta["identical"] is True
    tr = runs["token_recycling"]
    for s in tr.steps:
        views.draft_tree(s)
        views.tree_mask(s)
        views.method_state(s, "token_recycling")
    views.acceptance_stats(tr.steps)
    aded = lab.run("aded", [1, 2, 3, 1, 2, 3, 1, 2], max_new_tokens=16)
    for s in aded.steps:
        if s.kind == "decode":
            fig = views.method_state(s)
            assert fig.layout.meta["method"] == "aded" and list(fig.layout.meta["contexts"]) == list(s.state["rows"])
    look = lab.run("lookahead", [1, 2, 3, 1, 2, 3, 1, 2], max_new_tokens=16)
    for s in look.steps:
        if s.kind == "decode":  # each window cell is labelled with the token of the tree node it was verified as
            heat = views.method_state(s).data[0]
            w = s.state["window"]
            at = {(lev, j): s.state["window_nodes"][lev][j] for lev in range(len(w)) for j in range(len(w[0]))}
            node_text = {k: views.show_token(s.nodes[i].text) for k, i in at.items() if i < len(s.nodes)}
            assert {k: heat.text[k[0]][k[1]] for k in node_text} == node_text
    assert views.method_state(lab.run("swift", [1, 2, 3, 1], max_new_tokens=6).steps[-1]).layout.meta["method"] \
        == "swift"
    views.token_stream(tr.steps)
    curves = {b: lab.latency_curve(backend=b) for b in ("stock", "fast")}  # one measurement: labkit.sizing
    assert lab.lm.backend == "stock"  # measuring the fast path switched back afterwards
    fig = views.latency_curve(curves)
    assert all(c.tokens[0] == 1 and f"-{b}-" in c.key for b, c in curves.items())  # cached per backend
    assert set(fig.layout.meta["median"]) == {"stock", "fast"}
    labelled = lab.compare({"tr-2": ("token_recycling", {"nodes": 2}), "ar": "autoregressive"}, [1, 2, 3],
                           max_new_tokens=6)
    assert list(labelled) == ["tr-2", "ar"] and labelled["tr-2"].config["params"]["nodes"] == 2


def test_init_notebook_renderers_are_offline():
    import plotly.io as pio

    before = pio.renderers.default
    try:
        views.init_notebook()
        assert pio.renderers.default == "plotly_mimetype+labkit_notebook"
        bundle = pio.renderers["labkit_notebook"].to_mimebundle(views.draft_tree(STEP).to_dict())
        assert not re.search(r"<script[^>]*src=[\"']?https?:", bundle["text/html"])
    finally:
        pio.renderers.default = before


def test_token_stream_html_marks_the_end_of_sequence_token():
    import dataclasses

    steps = steps_run()
    ended = steps[:-1] + [dataclasses.replace(steps[-1], finished="eos", text="<|im_end|>")]
    out = views.token_stream_html(ended)
    assert "[end]" in out and "end of sequence" in out and "&lt;|im_end|&gt;</span>" not in out
    assert "[end]" not in views.token_stream_html(steps)  # a run cut by the token budget has no end marker


def test_plain_text_drops_the_end_token_only():
    import dataclasses

    ended = [mk(1, [], [], [7], text="Hello", bonus_text="Hello"),
             mk(2, [], [], [2], text="<|im_end|>", bonus_text="<|im_end|>")]
    ended[-1] = dataclasses.replace(ended[-1], finished="eos")
    assert views.plain_text(ended) == "Hello"
    cut = [ended[0], dataclasses.replace(ended[1], finished="length")]
    assert views.plain_text(cut) == "Hello<|im_end|>"  # not an end token: kept


def test_decisions_rows_and_showcase_for_a_rejection():
    rows = views.decisions(STEP)
    assert [r[0] for r in rows] == list(range(len(TREE))) and rows[2][4] == ACCEPTED
    assert rows[2][5:9] == ["0.4", "0.5", "1", "0.3"]  # q, p, min(1, p/q), u as shown
    assert list(views.decisions_table(STEP).columns) == list(views.DECISION_HEADERS[1:])
    clean = mk(4, [node(1, -1, 1, ACCEPTED), node(2, 0, 2, ACCEPTED), node(3, 1, 3, ACCEPTED)], [0, 1, 2],
               [1, 2, 3, 9])
    assert views.showcase_step([STEP, clean]) is clean  # most accepted
    assert views.showcase_step([STEP, clean], rejection=True) is STEP  # both accepted and rejected


def test_one_provenance_rule_for_every_view(tiny):
    """A strategy's or the baseline's tokens are the target's own (grey), a speculative method's are drafts or
    bonus tokens, wherever they are drawn: the stream, its HTML and the side-by-side strip agree."""
    from labkit.session import Session

    lab = Session(lm=tiny("llama"))
    runs = {name: lab.run(name, "w1 w2 w3 w1 w2", max_new_tokens=6, chat=False)
            for name in ("autoregressive", "greedy", "prompt_lookup")}
    for name, run in runs.items():
        own = methods.own_tokens_only(name)
        assert own == (name != "prompt_lookup")
        html = views.token_stream_html(run)
        assert ("lk-autoregressive" in html) == own and ("lk-bonus" in html) == (not own)
    strip = views.side_by_side(runs).data[0]
    assert strip.marker.color[1] == views.PROVENANCE_COLORS["autoregressive"]


@pytest.mark.parametrize("name", methods.variants())
def test_every_view_draws_every_methods_steps(tiny, name):
    """Registry-wide: the tree, the mask, the method state, the stream and the statistics draw every Step every
    method yields (a view that breaks for one method fails here, not at draw time in the app), and a method that
    declares state keys carries them in every decode round."""
    from labkit.session import Session

    cls = methods.get(name)
    lm = tiny("llama")
    if cls.supports(lm) is not None:
        pytest.skip(cls.supports(lm))
    run = Session(lm=lm).run(name, "w1 w2 w3 w1 w2 w3 w1", max_new_tokens=10, chat=False)
    name = cls.name  # a variant's spec -> its method
    for step in run.steps:
        views.draft_tree(step)
        fig = views.method_state(step, name)
        if step.kind == "decode":
            assert set(cls.state_keys) <= set(step.state), f"step {step.index} lacks {set(cls.state_keys)}"
            if cls.state_keys:
                assert fig.layout.meta["method"] == name  # the method's own view, not the generic table
            if step.nodes:
                views.tree_mask(step)
                views.kv_compaction(step)
    views.token_stream_html(run)
    views.token_stream(run)
    views.acceptance_stats(run)
