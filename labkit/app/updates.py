"""What the handlers yield (small dataclasses of plain values and figures), the text they show, and the
throttle that spaces redraws."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import methods, views
from ..metrics import compute as compute_metrics
from ..models import LM
from ..trace import Step
from .config import UNCHANGED, USER_ERRORS, log



# ---- figures: labkit.views draws; a figure that fails does not take the app down -----------------------------

class Figures:
    """Draws the app's figures with labkit.views. A figure that raises is logged with its traceback, recorded
    in `errors` (the app tests fail on any) and gives None, so one bad step of an uploaded trace cannot take
    the app down; the explorer says which plot failed."""

    def __init__(self):
        self.errors: list[str] = []

    def draw(self, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a view must not take the app down; the log keeps the traceback
            log.exception("view %s failed", fn.__name__)
            self.errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")
            return None


FIGURES = Figures()


def stream_html(steps: list[Step], method: str | None = None, note: bool = True) -> str:
    """The coloured token stream, provenance by `methods.own_tokens_only`."""
    return views.token_stream_html(steps, autoregressive=methods.own_tokens_only(method), note=note)


# ---- metrics text -----------------------------------------------------------------------------------------

def metrics_md(steps: list[Step]) -> str:
    if not steps:
        return ""
    m = compute_metrics(steps)
    acc = f"{m.accepted}/{m.drafted} ({m.draft_acceptance_rate:.0%})" if m.drafted else "-"
    return (f"**{m.tokens_per_s:.1f}** tok/s · mean acceptance length **{m.mean_accept_len:.2f}** · "
            f"target forwards **{m.target_forwards}** · {m.new_tokens} tokens in {m.rounds} rounds · "
            f"draft tokens accepted {acc}")


def speed_md(steps: list[Step], lm: LM) -> str:
    """The run against plain decoding on this machine: what its decode rounds measured (their tokens/s times the
    curve's one-token step), and what the latency curve predicts for its rounds: charging the drafting at its
    measured cost relative to the verify passes when it took a real share of the rounds (a self-drafting method
    pays for its own forward passes), else for the verify passes alone. "" when no curve is at hand."""
    from .. import latency

    try:
        curve = latency.latency_curve(lm)  # cached per model, device, dtype and backend (measured once otherwise)
    except Exception:  # noqa: BLE001  (an optional figure: a failure leaves it out, with the traceback in the log)
        log.exception("latency curve")
        return ""
    pred = latency.predicted(steps, curve)
    decode = [s for s in steps if s.kind == "decode"]
    seconds = sum(s.timing.total for s in decode)
    if pred is None or seconds <= 0:
        return ""
    free, drafted = pred
    measured = sum(len(s.tokens) for s in decode) / seconds * curve.t(0)
    head = (f"\n\nvs plain decoding on this machine: measured **×{measured:.2f}** (the decode rounds' tokens/s × "
            f"the curve's one-token step, {curve.t(0) * 1e3:.0f} ms)")
    if drafted is None:  # drafting is a lookup: the verify passes are the cost
        return head + f"; expected **×{free:.2f}** (its latency curve)"
    forwards = sum(s.draft_forwards for s in decode)
    return (head + f"; expected **×{drafted:.2f}** (its latency curve plus its drafting, which took "
            f"{latency.draft_share(steps):.0%} of the decode time" + (f" in {forwards} draft forwards" if forwards else "")
            + f"; ×{free:.2f} if drafting were free)")


def _finish_reason(steps: list[Step], stopped: bool) -> str:
    last = steps[-1].finished if steps else ""
    if last == "eos":
        return "finished (end of sequence)"
    if last == "length":
        return "finished (max new tokens)"
    return "stopped" if stopped else "ended"


def _short(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


class Throttle:
    """`due()` is True at most once per `interval` seconds (and always when forced)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval, self.clock, self.last = interval, clock, -math.inf

    def due(self, force: bool = False) -> bool:
        now = self.clock()
        if force or now - self.last >= self.interval:
            self.last = now
            return True
        return False


# ---- updates the handlers yield ---------------------------------------------------------------------------

# what a run that fails before its first step shows: its error alone, not beside the previous run's output
CLEARED_LIVE = dict(html="", text="", tree=None, stats=None, metrics="")


@dataclass
class LiveUpdate:
    html: Any = UNCHANGED
    text: Any = UNCHANGED
    tree: Any = UNCHANGED
    stats: Any = UNCHANGED
    metrics: Any = UNCHANGED
    status: str = ""
    error: str = ""
    done: bool = False
    steps: int = 0  # at the end: how many steps the run has (the step slider's range) ...
    shown: int = -1  # ... and which one the tree shows


@dataclass
class Column:
    title: str
    html: str
    metrics: str


@dataclass
class CompareUpdate:
    columns: Any = UNCHANGED  # list of COMPARE_COLUMNS entries: Column, or None for a hidden slot
    plot: Any = UNCHANGED
    verdict: Any = UNCHANGED
    status: str = ""
    error: str = ""
    done: bool = False


@dataclass
class StepView:
    summary: str = ""
    tree: Any = None
    mask: Any = None
    decisions: list = field(default_factory=list)
    state_plot: Any = None
    state: Any = None
    sparsity: Any = None  # the step's SparsityFrame as a layer x position heatmap, for runs under a KV policy
    error: str = ""


DECISION_HEADERS = list(views.DECISION_HEADERS)


@dataclass
class ExplorerUpdate:
    choices: list = field(default_factory=list)
    selected: str | None = None
    max_step: int = 0
    step: int = 0
    view: StepView = field(default_factory=StepView)
    download: str | None = None
    message: str = ""
    error: str = ""


@dataclass
class BenchUpdate:
    rows: Any = UNCHANGED  # list of dicts (bench_rows: bench.table per category and method)
    plot: Any = UNCHANGED  # views.bench_summary: speedup and acceptance length per category
    status: str = ""
    progress: float = 0.0
    error: str = ""
    done: bool = False


@dataclass
class SparsityUpdate:
    heatmap: Any = UNCHANGED
    timeline: Any = UNCHANGED
    fidelity: Any = UNCHANGED
    metrics: Any = UNCHANGED
    html: Any = UNCHANGED
    status: str = ""
    error: str = ""
    done: bool = False


def _user_message(e: BaseException) -> str:
    if isinstance(e, USER_ERRORS):
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return msg
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"internal error ({type(e).__name__}{': ' + first if first else ''}); details are in the server log"
