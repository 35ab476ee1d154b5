"""The live widget, driven programmatically (no browser): it processes steps, updates figure data, throttles
redraws, respects the stop flag, and replays traces with its slider."""
from dataclasses import dataclass

import pytest

pytest.importorskip("anywidget")  # plotly's FigureWidget needs it

from labkit import Session, views  # noqa: E402
from labkit.live import LiveView, sync_figure  # noqa: E402
from labkit.trace import Step  # noqa: E402

from test_views import STEP, steps_run  # noqa: E402  (tests/ is on sys.path)

PROMPT = [1, 2, 3, 1, 2, 3, 1, 2]


@dataclass
class Frame:  # a foreign event (e.g. a sparsity frame)
    layer: int = 0


def markers(fw):
    return sum(len(t.x) for t in fw.data if t.type == "scatter" and t.mode and "markers" in t.mode)


def test_process_updates_figures_and_skips_foreign_events():
    lv = LiveView(min_interval=0)
    for e in steps_run()[:2] + [Frame()]:
        lv.process(e)
    assert len(lv.steps) == 2 and len(lv.events) == 3 and lv.draws == 2
    assert markers(lv.tree_fig) == len(lv.steps[-1].nodes) + 2
    assert lv.tree_fig.layout.title.text.startswith("Step 1")
    assert lv.stream.value.count('<span class="lk-') == 4  # prefill + a, b + bonus
    assert lv.stats_fig.layout.meta["new_tokens"] == 4
    lv.process(STEP)
    assert markers(lv.tree_fig) == len(STEP.nodes) + 2 and lv.tree_fig.layout.title.text.startswith("Step 3")


def test_redraws_are_throttled_with_a_final_draw():
    lv = LiveView(min_interval=3600)
    drew = [lv.process(s) for s in steps_run()]
    assert drew == [True, False, False, False, False] and lv.draws == 1
    lv.draw()
    assert lv.draws == 2 and lv.stats_fig.layout.meta["new_tokens"] == sum(len(s.tokens) for s in steps_run())


def test_sync_figure_replaces_traces_when_the_structure_changes():
    import plotly.graph_objects as go

    fw = go.FigureWidget()
    sync_figure(fw, views.draft_tree(STEP))
    n = len(fw.data)
    sync_figure(fw, views.acceptance_stats(steps_run()))
    assert len(fw.data) == 5 and n != 5 and fw.layout.meta["view"] == "acceptance_stats"
    sync_figure(fw, views.acceptance_stats(steps_run() + steps_run()))
    assert len(fw.layout.shapes) == 1
    sync_figure(fw, views.acceptance_stats(steps_run()))
    assert len(fw.layout.shapes) == 0  # stale shapes are cleared


@pytest.fixture(scope="module")
def lab(tiny):
    return Session(lm=tiny("llama"))


def test_run_draws_live_and_enables_replay(lab):
    lv = LiveView(lab, min_interval=0).run("token_recycling", PROMPT, max_new_tokens=16)
    run = lv.wait()
    assert run is lv.result and len(run.tokens) == 16 and lv.finished == "length"
    assert lv.draws == len(run.steps) + 1  # every step (no throttle) + the final draw
    assert lv.slider.max == len(run.steps) - 1 and not lv.slider.disabled and lv.stop_button.disabled
    assert lv.state_fig.layout.meta["method"] == "token_recycling"
    assert "done" in lv.status.value
    lv.show(1)  # the slider replays the run
    assert lv.tree_fig.layout.title.text.startswith("Step 1") and lv.stats_fig.layout.meta["new_tokens"] == len(
        run.steps[0].tokens) + len(run.steps[1].tokens)


def test_stop_button_stops_between_rounds(lab):
    lv = LiveView(lab, min_interval=0)
    real = lv.process

    def process(event):
        out = real(event)
        if len(lv.steps) == 2:
            lv.stop_button.click()  # as the user would, mid-run
        return out

    lv.process = process
    lv.run("autoregressive", PROMPT, max_new_tokens=30)
    assert len(lv.steps) == 2 and lv.finished == "stopped" and "stopped" in lv.status.value
    assert len(lv.result.tokens) == 2


def test_background_run_and_stop_flag(lab):
    lv = LiveView(lab, min_interval=0.05)
    lv.stop()  # a stop requested before the run starts is cleared by run()
    lv.run("prompt_lookup", PROMPT, max_new_tokens=12, wait=False)
    if lv.running:
        with pytest.raises(RuntimeError):
            lv.run("prompt_lookup", PROMPT, max_new_tokens=12)
    run = lv.wait(timeout=120)
    assert len(run.tokens) == 12 and not lv.running
    lv2 = LiveView(lab, min_interval=0.05)
    lv2._stop = True
    lv2.run("prompt_lookup", PROMPT, max_new_tokens=12, wait=False)
    lv2.stop()
    lv2.wait(timeout=120)
    assert lv2.finished in ("stopped", "length")


def test_bad_input_raises_at_once(lab):
    with pytest.raises(Exception):
        LiveView(lab).run("no_such_method", PROMPT)
    with pytest.raises(ValueError):
        LiveView().run("autoregressive", PROMPT)


def test_replay_from_a_trace_file_with_foreign_events(lab, tmp_path):
    run = lab.run("token_recycling", PROMPT, max_new_tokens=12)
    path = tmp_path / "t.jsonl"
    run.save(path)
    lv = LiveView.replay(str(path))
    assert lv.method == "token_recycling" and lv.slider.max == len(run.steps) - 1
    assert lv.tree_fig.layout.title.text.startswith(f"Step {run.steps[-1].index}")
    lv.slider.value = 0
    assert lv.tree_fig.layout.title.text.startswith("Step 0") and "1 tokens" in lv.status.value
    assert lv.stats_fig.layout.meta["new_tokens"] == len(run.steps[0].tokens)
    events = [run.steps[0], Frame(), run.steps[1], Frame()]
    lv2 = LiveView.replay(events)
    assert len(lv2.steps) == 2 and len(lv2.events) == 4 and lv2.slider.max == 1
    assert all(isinstance(s, Step) for s in lv2.steps)
    lv3 = LiveView.replay(run)
    assert lv3.autoregressive is False and lv3.slider.max == len(run.steps) - 1
    empty = LiveView.replay([Frame()])
    assert empty.slider.disabled and "no steps" in empty.status.value


def test_the_synced_state_for_new_views_is_the_latest_figure():
    """plotly's update messages reach only existing views; a view created later renders `_widget_data` /
    `_widget_layout`, which must therefore follow every draw."""
    lv = LiveView(min_interval=0)
    for s in steps_run():
        lv.process(s)
    fw = lv.tree_fig
    assert fw._widget_data == fw._data and fw._widget_layout == fw._layout
    assert sum(len(t.get("x", ())) for t in fw._widget_data if "markers" in t.get("mode", "")) == len(
        steps_run()[-1].nodes) + 2
    assert fw.get_state()["_widget_layout"]["title"]["text"].startswith("Step 4")
