"""A live view for JupyterLab: watch a decoder generate, round by round, or replay a saved trace.

    from labkit import Session
    from labkit.live import LiveView
    lab = Session()
    live = LiveView(lab).run("token_recycling", "Tell me about tides.", max_new_tokens=64)   # shows itself
    run = live.wait()                     # the finished Run (config, steps, text, metrics)
    LiveView.replay("tides.jsonl")        # the same widget over a saved trace, with a step slider

The widget (ipywidgets + plotly FigureWidget) shows the token stream (coloured by provenance), the latest
round's draft tree, the acceptance statistics and the method's state, updated as Steps arrive. Redraws are
throttled (at most one every `min_interval` seconds, plus a final one), so long runs stay responsive.

Stop: inside a Jupyter kernel, `run` decodes in a background thread and returns at once, so the kernel stays
free to receive the Stop button's click; the engine checks the flag between rounds (`should_stop`). Outside a
kernel (scripts, tests) `run` decodes in the calling thread unless `wait=False`. After a run, the step slider
replays it. Events that are not Steps (e.g. sparsity frames) are kept but not drawn.
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Callable

from . import views
from .trace import Step, Trace, load_trace


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def sync_figure(fw, fig, *, replace: bool = False) -> None:
    """Make FigureWidget `fw` show Figure `fig`: traces updated in place when the structure matches (the views
    keep a fixed trace order for that), replaced otherwise (or with `replace=True`); the layout is overwritten."""
    with fw.batch_update():
        same = (not replace and len(fw.data) == len(fig.data)
                and all(a.type == b.type for a, b in zip(fw.data, fig.data)))
        if same:
            for a, b in zip(fw.data, fig.data):
                d = b.to_plotly_json()
                d.pop("type", None)
                d.pop("uid", None)
                a.update(d, overwrite=True)
        else:
            fw.data = []
            fw.add_traces(list(fig.data))
        lay = fig.layout.to_plotly_json()
        for key in ("shapes", "annotations"):
            lay.setdefault(key, [])
        fw.update_layout(lay, overwrite=True)
    # The update messages above reach only views that exist, and the browser drops those that arrive before
    # the widget's model has loaded (a live run starts drawing before its output is displayed; a replay draws
    # before it). A view renders from the synced state `_widget_data` / `_widget_layout`, which plotly sets
    # only at construction: keep it current, so every view, however late, starts from the latest figure.
    fw._widget_data = copy.deepcopy(fw._data)
    fw._widget_layout = copy.deepcopy(fw._layout)


class LiveView:
    """Run a decoder with live figures, or replay a trace. See the module docstring."""

    def __init__(self, session=None, *, min_interval: float = 0.2, show_state: bool = True):
        from .extras import require

        W = require("ipywidgets", "notebook", "labkit.live")
        import plotly.graph_objects as go

        self.session = session
        self.min_interval = float(min_interval)
        self.show_state = show_state
        self.events: list[Any] = []
        self.steps: list[Step] = []
        self.config: dict = {}
        self.method: str | None = None
        self.autoregressive = False
        self.draws = 0
        self.error: BaseException | None = None
        self.finished = ""  # "", "eos", "length", "stopped", "error"
        self._result = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._last_draw = float("-inf")
        self._lock = threading.RLock()
        self._token_text: Callable[[int], str] | None = None

        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger", disabled=True,
                                    tooltip="stop after the current round")
        self.stop_button.on_click(lambda _b: self.stop())
        self.status = W.HTML(value="<i>idle</i>")
        self.slider = W.IntSlider(value=0, min=0, max=0, description="step", continuous_update=True,
                                  layout=W.Layout(width="60%"), disabled=True)
        self.play = W.Play(value=0, min=0, max=0, interval=600, disabled=True)
        W.jslink((self.play, "value"), (self.slider, "value"))
        self.slider.observe(self._on_slider, names="value")
        self.stream = W.HTML(value="")
        self.tree_fig, self.stats_fig, self.state_fig = go.FigureWidget(), go.FigureWidget(), go.FigureWidget()
        parts = [W.HBox([self.stop_button, self.status]), self.stream, W.HBox([self.play, self.slider]),
                 self.tree_fig, self.stats_fig]
        if show_state:
            parts.append(self.state_fig)
        self.widget = W.VBox(parts)

    # ---- display ------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # ---- drawing ------------------------------------------------------------------------------------
    def process(self, event: Any) -> bool:
        """Take one event; Steps are recorded and drawn if `min_interval` has passed since the last redraw.
        Returns True if it redrew."""
        with self._lock:
            self.events.append(event)
            if not isinstance(event, Step):
                return False
            self.steps.append(event)
            now = time.monotonic()
            if now - self._last_draw >= self.min_interval:
                self.draw()
                return True
            return False

    def draw(self, upto: int | None = None) -> None:
        """Redraw for the steps up to index `upto` in `self.steps` (default: all): stream and statistics over
        them, tree and method state of the last one."""
        with self._lock:
            steps = self.steps if upto is None else self.steps[: upto + 1]
            self._last_draw = time.monotonic()
            self.draws += 1
            self.stream.value = views.token_stream_html(steps, autoregressive=self.autoregressive)
            if not steps:
                return
            step = steps[-1]
            sync_figure(self.tree_fig, views.draft_tree(step))
            sync_figure(self.stats_fig, views.acceptance_stats(steps))
            if self.show_state:
                sync_figure(self.state_fig, views.method_state(step, self.method, token_text=self._token_text))
            self._set_status(steps)

    def _set_status(self, steps: list[Step], note: str = "") -> None:
        from . import metrics

        m = metrics.compute(steps)
        head = f"<b>{self.method or 'trace'}</b>" + (f" · {note}" if note else "")
        self.status.value = (f"{head} · step {steps[-1].index if steps else '-'} · {m.new_tokens} tokens · "
                             f"mean acceptance length {m.mean_accept_len:.2f} · {m.tokens_per_s:.1f} tok/s")

    def _on_slider(self, change) -> None:
        if self.slider.disabled or not self.steps:
            return
        self.draw(int(change["new"]))

    def _enable_replay(self) -> None:
        n = len(self.steps)
        self.slider.max = max(0, n - 1)
        self.play.max = max(0, n - 1)
        self.slider.disabled = self.play.disabled = n == 0
        self.slider.unobserve(self._on_slider, names="value")
        self.slider.value = max(0, n - 1)
        self.play.value = max(0, n - 1)
        self.slider.observe(self._on_slider, names="value")

    # ---- running ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Ask the decoder to stop after the current round (the Stop button calls this)."""
        self._stop = True
        self.stop_button.disabled = True

    def run(self, method: str, prompt: str | list[int], *, max_new_tokens: int = 64, sampling=None,
            params: dict | None = None, chat: bool = True, trace: str | None = None,
            wait: bool | None = None) -> "LiveView":
        """Decode `prompt` with `method` on the session's model, drawing as Steps arrive. Bad input raises here.
        `wait=None`: in a Jupyter kernel decode in a background thread (the Stop button works; `wait()` for the
        Run), elsewhere decode now. Returns self, which displays as the widget."""
        from . import methods as registry

        if self.session is None:
            raise ValueError("LiveView needs a Session to run a decoder (LiveView(lab)); replay needs none")
        if self.running:
            raise RuntimeError("a run is in progress: stop() it or wait() for it first")
        self._stop = False
        self.error = None
        self.finished = ""
        self._result = None
        self.events, self.steps = [], []
        self.draws = 0
        self._last_draw = float("-inf")
        self.method = method if isinstance(method, str) else getattr(method, "name", None)
        self.autoregressive = registry.own_tokens_only(self.method)
        started = self.session.start(method, prompt, max_new_tokens=max_new_tokens, sampling=sampling, chat=chat,
                                     params=params, trace=trace, should_stop=lambda: self._stop)
        lm = self.session.lm
        self._token_text = lambda t: lm.token_texts([t])[0]
        steps = started.steps
        self.config = started.config
        self.slider.disabled = self.play.disabled = True
        self.stop_button.disabled = False
        self.status.value = f"<b>{self.method}</b> · starting..."
        if wait is None:
            wait = not _in_kernel()
        if wait:
            self._consume(steps)
            if self.error is not None:
                raise self.error
        else:
            self._thread = threading.Thread(target=self._consume, args=(steps,), daemon=True, name="labkit-live")
            self._thread.start()
        return self

    def _consume(self, steps) -> None:
        from .session import Run

        try:
            for step in steps:
                self.process(step)
            last = self.steps[-1] if self.steps else None
            self.finished = "stopped" if self._stop and (last is None or not last.finished) else (
                last.finished if last else "")
        except BaseException as e:  # noqa: BLE001 - shown in the widget, re-raised by wait()
            self.error = e
            self.finished = "error"
        finally:
            self._result = Run(config=self.config, steps=list(self.steps))
            self.stop_button.disabled = True
            with self._lock:
                if self.steps:
                    self.draw()  # the final draw, whatever the throttle said
                self._enable_replay()
                if self.error is not None:
                    self.status.value = (f'<b>{self.method}</b> · <span style="color:#d62728">error: '
                                         f"{type(self.error).__name__}: {self.error}</span>")
                elif self.steps:
                    note = {"stopped": "stopped by the user", "eos": "done (end of sequence)",
                            "length": "done (token budget)"}.get(self.finished, "done")
                    self._set_status(self.steps, note)

    def wait(self, timeout: float | None = None):
        """Wait for a background run to end and return its Run (re-raises the run's error)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("the run is still going")
        if self.error is not None:
            raise self.error
        return self._result

    @property
    def result(self):
        """The finished Run (None while running or before any run)."""
        return None if self.running else self._result

    def snapshot(self) -> None:
        """Show the view as it stands as static output: the coloured stream, the run's most informative tree and
        the statistics, as plain figures. Widgets render blank in an exported or static copy of a notebook
        (their script needs a live kernel); a `live.snapshot()` cell after the run keeps what it showed."""
        from IPython.display import HTML, display

        with self._lock:
            steps = list(self.steps)
        display(HTML(views.token_stream_html(steps, autoregressive=self.autoregressive)))
        if steps:
            display(views.draft_tree(views.showcase_step(steps) or steps[-1]))
            display(views.acceptance_stats(steps))

    # ---- replay -------------------------------------------------------------------------------------
    @classmethod
    def replay(cls, trace: Any, *, show_state: bool = True) -> "LiveView":
        """The widget over a saved trace (path, Trace, Run, or list of events) with a step slider and a play
        button; the slider starts at the last step."""
        from . import methods as registry

        if isinstance(trace, (str, bytes)) or hasattr(trace, "__fspath__"):
            trace = load_trace(trace)
        view = cls(None, show_state=show_state)
        if isinstance(trace, Trace):
            view.config, events = trace.config, list(trace.events)
        elif hasattr(trace, "steps") and hasattr(trace, "config"):
            view.config, events = trace.config, list(trace.steps)
        else:
            events = list(trace)
        view.method = view.config.get("method")
        view.autoregressive = registry.own_tokens_only(view.method)
        view.events = events
        view.steps = [e for e in events if isinstance(e, Step)]
        view.stop_button.layout.display = "none"
        view._enable_replay()
        if view.steps:
            view.draw()
            view._set_status(view.steps, "replay")
        else:
            view.status.value = "<i>the trace has no steps</i>"
        return view

    def show(self, index: int) -> None:
        """Show step `index` (position in `self.steps`) as the slider does."""
        self.slider.value = index
        if self.slider.disabled:
            self.draw(index)


__all__ = ["LiveView", "sync_figure"]
