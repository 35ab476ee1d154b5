"""Sparsity views on hand-made frames: the figure data (heatmap values, downsampling, residency codes,
fidelity series), not HTML."""
import math

import pytest

from labkit.sparsity import views
from labkit.sparsity.frames import AttnRow, HeadFrame, LayerFrame, SparsityFrame, residency
from labkit.trace import event_from_json, event_to_json


def frame(step=1, kv_len=4, kept0=((0, 1), (3, 4)), kl=0.1):
    h0 = HeadFrame(head=0, kept=kept0, n_kept=2, recall=(0.75,), rows=(AttnRow(full=(0.5, 0, 0, 0.25, 0.25)),))
    h1 = HeadFrame(head=1, kept=((0, kv_len),), n_kept=kv_len, recall=(1.0,),
                   rows=(AttnRow(full=(0.1, 0.2, 0.3, 0.2, 0.2)),))
    top = HeadFrame(head=0, kept=((0, kv_len),), n_kept=kv_len, recall=(1.0,),
                    rows=(AttnRow(top=(0, 3), weights=(0.6, 0.3), mass=0.9),))
    return SparsityFrame(step=step, kind="decode", policy="h2o(budget=2)", kv_len=kv_len, queries=(kv_len,),
                         layers=(LayerFrame(0, (h0, h1)), LayerFrame(2, (top,))), kv_kept=((2, 4), (4, 4), (4, 4)),
                         recall=0.9, kl=kl, top1=1.0)


def close(a, b):
    return all(math.isclose(x, y, abs_tol=1e-9) for x, y in zip(a, b)) and len(a) == len(b)


def test_frame_round_trip_and_totals():
    f = frame()
    assert event_from_json(event_to_json(f)) == f
    assert f.kv_kept_total == 22 and f.kv_dense_total == 24 and f.kv_ratio == pytest.approx(22 / 24)


def test_layer_map_attention_and_kept():
    fig = views.layer_map(frame())
    hm = fig.data[0]
    assert list(hm.y) == [0, 2] and list(hm.x) == [0, 1, 2, 3, 4]
    assert close(hm.z[0], [0.3, 0.1, 0.15, 0.225, 0.225])  # mean of the two heads
    assert close(hm.z[1], [0.6, 0, 0, 0.3, 0])  # a top-k row: only its stored weights
    kept = views.layer_map(frame(), what="kept").data[0]
    assert close(kept.z[0], [1, 0.5, 0.5, 1, 1])  # the round's own token (position 4) is always read
    one = views.layer_map(frame(), head=1).data[0]
    assert list(one.y) == [0] and close(one.z[0], [0.1, 0.2, 0.3, 0.2, 0.2])


def test_head_map_and_downsampling():
    hm = views.head_map(frame(), layer=0, max_positions=2).data[0]
    assert list(hm.x) == [0, 3]  # bins of 3 positions
    assert close(hm.z[0], [0.5, 0.5]) and close(hm.z[1], [0.6, 0.4])  # attention mass per bin
    kept = views.head_map(frame(), layer=0, what="kept", max_positions=2).data[0]
    assert close(kept.z[0], [1 / 3, 1.0])  # share of the bin kept
    with pytest.raises(ValueError, match="layer 1"):
        views.head_map(frame(), layer=1)


def test_residency_record_and_timeline():
    frames = [frame(1, 4, ((0, 1), (3, 4))), frame(2, 5, ((0, 1), (4, 5)))]
    res = residency(frames, layer=0, head=0)
    assert res.cells == ((1.0, 0.0, 0.0, 1.0, -1.0), (1.0, 0.0, 0.0, 0.0, 1.0))
    assert res.counts() == {"kept": 4, "evicted": 5, "never_seen": 1}
    hm = views.residency_timeline(["not a frame"] + frames, layer=0, head=0).data[0]
    assert list(hm.y) == [1, 2]
    assert list(hm.z[0][:4]) == [1.0, 0.0, 0.0, 1.0] and math.isnan(hm.z[0][4])  # never seen: NaN (grey)
    agg = residency(frames, layer=0)  # both heads of layer 0: the share keeping each position
    assert agg.cells[0][:4] == (1.0, 0.5, 0.5, 1.0)


def test_fidelity_and_kv_views():
    frames = [frame(1, kl=0.1), frame(2, kl=None)]
    fig = views.fidelity(frames)
    names = [t.name for t in fig.data]
    assert names == ["recall", "top-1 agreement", "KV kept / dense", "KL (nats)"]
    assert list(fig.data[0].y) == [0.9, 0.9]
    assert fig.data[3].y[0] == 0.1 and math.isnan(fig.data[3].y[1])  # not measured: a gap
    bars = views.kv_by_layer(frame())
    assert list(bars.data[0].y) == [8, 8, 8] and list(bars.data[1].y) == [6, 8, 8]


def test_policy_summary_means_skip_unmeasured_steps():
    prefill = SparsityFrame(step=0, kind="prefill", policy="h2o", kv_len=0, queries=(3,), layers=(), recall=0.1)
    a = [prefill, frame(1, kl=0.1), frame(2, kl=None)]
    dense = SparsityFrame(step=1, kind="decode", policy="dense", kv_len=4, queries=(4,), layers=(),
                          kv_kept=((4, 4),), recall=1.0)
    fig = views.policy_summary({"h2o": ["a step"] + a, "dense": [dense]})
    m = fig.layout.meta
    assert m["labels"] == ["h2o", "dense"] and m["steps"] == [2, 1]  # decode frames only
    assert m["recall"] == pytest.approx([0.9, 1.0]) and m["kl"][0] == pytest.approx(0.1) and m["kl"][1] is None
    assert m["kv_ratio"] == pytest.approx([22 / 24, 1.0]) and m["top1"] == [1.0, None]
    assert [t.name for t in fig.data] == ["attention recall", "top-1 agreement", "KV share read", "KL"]
    assert math.isnan(fig.data[3].y[1])


def test_top_positions_mean_over_heads_one_head_and_top_k_rows():
    f = frame()
    assert views.top_positions(f, 0, k=2) == [(0, pytest.approx(0.3)), (3, pytest.approx(0.225))]
    assert views.top_positions(f, 0, k=1, head=1) == [(2, pytest.approx(0.3))]
    assert views.top_positions(f, 2, k=3) == [(0, 0.6), (3, 0.3), (1, 0.0)]  # top-k row: unstored = 0
    with pytest.raises(ValueError, match="layer 1"):
        views.top_positions(f, 1)
    with pytest.raises(ValueError, match="head 5"):
        views.top_positions(f, 0, head=5)


def test_layer_map_log_scale_shows_small_weights():
    hm = views.layer_map(frame(), log=True).data[0]
    assert close(hm.z[0], [math.log10(x) for x in (0.3, 0.1, 0.15, 0.225, 0.225)])
    assert hm.z[1][1] == -5  # a zero weight sits at the floor, not at -inf
    assert close(hm.customdata[0], [0.3, 0.1, 0.15, 0.225, 0.225])  # hover shows the weight itself


def test_mass_by_region_splits_each_layer():
    meta = views.mass_by_region(frame(), sinks=1, recent=2).layout.meta
    assert meta["layers"] == [0, 2]
    # layer 0 (mean of two heads) over positions 0..4: sink [0], middle [1, 2], recent [3, 4]
    assert close([meta["sinks"][0], meta["middle"][0], meta["recent"][0]], [0.3, 0.25, 0.45])
    # layer 2 stored its row's top 2 weights (0.9 of the mass): the rest is not placed
    assert close([meta["sinks"][1], meta["middle"][1], meta["recent"][1], meta["unplaced"][1]], [0.6, 0, 0.3, 0.1])
    assert meta["unplaced"][0] == pytest.approx(0)


def test_recall_vs_kl_one_point_per_measured_step():
    fig = views.recall_vs_kl({"a": [frame(step=1, kl=0.1), frame(step=2, kl=0.3)], "b": [frame(kl=None)]})
    assert list(fig.data[0].x) == [0.9, 0.9] and list(fig.data[0].y) == [0.1, 0.3]
    assert len(fig.data[1].x) == 0  # no KL measured: no point
