"""The logic of the Gradio app (`app.py` is only layout): validation, per-visitor state, shared models, and
the handlers, written as plain generators over Steps so tests drive them without a server or a browser.

- Models are loaded lazily, once per process, and shared by every visitor (`ModelPool`); only names on the
  allow-list (`AppConfig.models`, the embedded models by default) can be loaded, and never with
  `trust_remote_code`.
- Each browser session has a `Visitor` (held in `gr.State`): its `Session`s (method instances keep their
  state, e.g. the Token Recycling matrix, across that visitor's prompts), its runs (what the trace explorer
  shows), and its stop flags. Nothing in it is shared with another visitor.
- Handlers take the plain values the components hold and yield small dataclasses of plain values and plotly
  figures. `UNCHANGED` in a field means "leave that component as it is" (app.py turns it into `gr.skip()`),
  which is how plot redraws are throttled. Bad input never raises out of a handler: it becomes `error`, a
  one-line message, and nothing else in the visitor's state changes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import backends, engine, methods, sparsity, views
from . import metrics as M
from . import trace as TR
from .models import DEFAULT_MODEL, EMBEDDED, LM, ModelLoadError, load
from .params import ParamError, build, describe, is_self_spec
from .sampling import GREEDY
from .session import Session, sampling_config
from .sparsity import views as sparsity_views
from .trace import Step, TraceError

log = logging.getLogger("labkit.app")

# What a visitor can get wrong; anything else is a bug, logged with its traceback on the server and shown to
# the visitor as one line.
USER_ERRORS = (ParamError, ValueError, TraceError, ModelLoadError)


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"

    def __bool__(self) -> bool:
        return False


UNCHANGED: Any = _Unchanged()

MAX_COMPARE = 4  # methods a visitor can pick in Compare; the baseline runs too, so up to 5 columns
COMPARE_COLUMNS = MAX_COMPARE + 1
BASELINE = "autoregressive"
MODES = ("greedy", "sampling")


# ---- configuration ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppConfig:
    """What the operator decides. `models` is the allow-list: the only names a visitor can load."""

    models: tuple[str, ...] = tuple(EMBEDDED)
    default_model: str = ""
    dtype: str | None = None
    device: str | None = None
    backend: str = "auto"  # execution path of every model (labkit.backends): auto = fast on CPU, stock on GPU
    max_prompt_chars: int = 2000
    max_new_tokens: int = 256
    default_new_tokens: int = 64
    concurrency: int = 2  # generations running at once (all tabs together); the rest wait in the queue
    max_queue: int = 32
    text_interval: float = 0.15  # seconds between updates of a streaming text (a browser that falls behind
    # the model would keep showing new rounds long after Stop)
    plot_interval: float = 0.3  # seconds between redraws of a streaming plot
    stats_interval: float = 1.0
    max_upload_mb: float = 20.0
    max_runs: int = 12  # runs a visitor keeps for the trace explorer (oldest dropped first)
    bench_max_per_category: int = 3
    bench_max_new_tokens: int = 96

    def __post_init__(self):
        models = tuple(m.strip() for m in self.models if m and m.strip())
        if not models:
            raise ValueError("the model allow-list is empty")
        object.__setattr__(self, "models", models)
        default = self.default_model or (DEFAULT_MODEL if DEFAULT_MODEL in models else models[0])
        if default not in models:
            raise ValueError(f"default model {default!r} is not on the allow-list ({', '.join(models)})")
        object.__setattr__(self, "default_model", default)
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 1 <= self.default_new_tokens <= self.max_new_tokens:
            object.__setattr__(self, "default_new_tokens", min(64, self.max_new_tokens))

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "AppConfig":
        """LABKIT_APP_MODELS (comma-separated allow-list), LABKIT_APP_CONCURRENCY, LABKIT_APP_MAX_NEW_TOKENS,
        LABKIT_APP_DTYPE, LABKIT_APP_DEVICE, LABKIT_APP_BACKEND; keyword overrides (from CLI flags) win."""
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        if env.get("LABKIT_APP_MODELS"):
            kw["models"] = tuple(m for m in env["LABKIT_APP_MODELS"].split(","))
        for key, name in (("LABKIT_APP_CONCURRENCY", "concurrency"), ("LABKIT_APP_MAX_NEW_TOKENS", "max_new_tokens")):
            if env.get(key):
                try:
                    kw[name] = int(env[key])
                except ValueError:
                    raise ValueError(f"{key} must be an integer, got {env[key]!r}") from None
        for key, name in (("LABKIT_APP_DTYPE", "dtype"), ("LABKIT_APP_DEVICE", "device"),
                          ("LABKIT_APP_BACKEND", "backend")):
            if env.get(key):
                kw[name] = env[key]
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


# ---- models, shared by every visitor ----------------------------------------------------------------------

class ModelPool:
    """Loads each allowed model once, on first use, and hands the same LM to every visitor."""

    def __init__(self, allowed: Sequence[str], *, dtype: str | None = None, device: str | None = None,
                 backend: str = "auto", loader: Callable[[str], LM] | None = None):
        self.allowed = tuple(allowed)
        self._loader = loader or (lambda name: load(name, dtype=dtype, device=device, trust_remote_code=False,
                                                     backend=backend))
        self._lms: dict[str, LM] = {}
        self._lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self.loads = 0  # how many loads ran (tests: once per model, however many visitors)

    def check(self, name: Any) -> str:
        name = str(name or "").strip()
        if not name:
            raise ModelLoadError("no model chosen")
        if name not in self.allowed:
            raise ModelLoadError(f"model {name!r} is not on this app's allow-list ({', '.join(self.allowed)}); "
                                 "the operator adds models with --models or LABKIT_APP_MODELS")
        return name

    def loaded(self, name: str) -> bool:
        return name in self._lms

    def get(self, name: str) -> LM:
        name = self.check(name)
        with self._lock:
            lock = self._name_locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._lms:
                self.loads += 1
                self._lms[name] = self._loader(name)
            return self._lms[name]


# ---- one visitor ------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """A run the trace explorer can show: its config (as in a trace header) and its events."""

    key: str
    source: str  # live | compare | upload | bench
    config: dict
    events: list
    note: str = ""

    @property
    def steps(self) -> list[Step]:
        return [e for e in self.events if isinstance(e, Step)]


class Visitor:
    """One browser session's state. Held in `gr.State`, so it is never shared between visitors."""

    def __init__(self):
        self.id = uuid.uuid4().hex[:12]
        self.sessions: dict[str, Session] = {}
        self.runs: dict[str, RunRecord] = {}
        self.selected: str | None = None
        self.last_live: str | None = None  # the Live tab's latest run, which its step slider scrubs
        self.counter = 0
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # one generation at a time per visitor (method instances are not thread-safe)
        self._pending: threading.Event | None = None
        self._active: set[threading.Event] = set()

    def __deepcopy__(self, memo):  # gr.State deep-copies its initial value: each visitor gets a fresh one
        return Visitor()

    def session(self, pool: ModelPool, model: str) -> Session:
        if model not in self.sessions:
            self.sessions[model] = Session(lm=pool.get(model))
        return self.sessions[model]

    # stop flags: `arm` (the Run click, not queued) makes the flag the queued run will use, so a Stop pressed
    # while the run still waits in the queue stops it as soon as it starts.
    def arm(self) -> None:
        with self._lock:
            self._pending = threading.Event()

    def begin(self) -> threading.Event:
        with self._lock:
            ev, self._pending = self._pending or threading.Event(), None
            self._active.add(ev)
            return ev

    def end(self, ev: threading.Event) -> None:
        with self._lock:
            self._active.discard(ev)

    def request_stop(self) -> int:
        with self._lock:
            evs = set(self._active) | ({self._pending} if self._pending else set())
        for ev in evs:
            ev.set()
        return len(evs)

    def add_run(self, source: str, label: str, config: dict, events: list, max_runs: int, note: str = "") -> str:
        with self._lock:
            self.counter += 1
            key = f"{self.counter}. {source}: {label}"
            self.runs[key] = RunRecord(key, source, config, list(events), note)
            while len(self.runs) > max_runs:
                self.runs.pop(next(iter(self.runs)))
            self.selected = key
            return key


# ---- validation: every input, one clear line each ---------------------------------------------------------

def parse_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty: give a whole number")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    v = int(f)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        if hi is None:
            raise ValueError(f"{name}={v} is too small: it must be at least {lo}")
        if lo is None:
            raise ValueError(f"{name}={v} is too large: it must be at most {hi}")
        raise ValueError(f"{name}={v} is out of range [{lo}, {hi}]")
    return v


def parse_float(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty: give a number")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        raise ValueError(f"{name}={v:g} is out of range {'(' if lo_open else '['}{lo:g}, {hi:g}]")
    return v


def parse_prompt(prompt: Any, cfg: AppConfig) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type something for the model to continue")
    if len(prompt) > cfg.max_prompt_chars:
        raise ValueError(f"the prompt has {len(prompt)} characters; this app accepts at most {cfg.max_prompt_chars}")
    return prompt


def parse_sampling(mode: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any):
    mode = str(mode or "").strip().lower()
    if mode not in MODES:
        raise ValueError(f"decoding must be one of {', '.join(MODES)}, got {mode!r}")
    seed = parse_int("seed", 0 if seed is None else seed, 0, 2**31 - 1)
    if mode == "greedy":
        return sampling_config(seed=seed)
    return sampling_config(temperature=parse_float("temperature", temperature, 0.0, 2.0, lo_open=True),
                           top_k=parse_int("top_k", top_k, 0, 100_000),
                           top_p=parse_float("top_p", top_p, 0.0, 1.0, lo_open=True), seed=seed)


def method_names() -> list[str]:
    return list(methods.REGISTRY)


def method_label(name: str) -> str:
    """What the pickers show: name, title, and whether the method is lossless (and its kind if not speculative)."""
    info = methods.info(name)
    tags = ["lossless" if info["lossless"] else "LOSSY"]
    if info["kind"] != "speculative":
        tags.append(info["kind"])
    return f"{name} · {info['title']} [{', '.join(tags)}]"


def method_card(name: str) -> str:
    """Markdown describing a method: title, paper, lossless or lossy, kind, parameters."""
    try:
        info = methods.info(name)
    except ParamError as e:
        return f"⚠ {e}"
    tag = "lossless (token-identical to greedy `generate`; preserves the sampling distribution)" if info["lossless"] \
        else "**LOSSY**: trades exactness for speed, its output can differ from the target's"
    lines = [f"**{info['title']}** (`{name}`), {info['kind']}; {tag}.", "", f"Paper: {info['paper']}"]
    if info["kind"] == "speculative":
        lines += ["", f"Where it shines: _{info['example']}_"]
    for p in info["params"]:
        if p.get("model"):  # what the draft is and what it costs
            lines += ["", f"`{p['name']}` (default `{p['default']}`): {p['help']}"]
    if not info["params"]:
        lines += ["", "No parameters."]
    return "\n".join(lines)


def parse_params(name: str, raw: dict | None, pool: ModelPool) -> dict:
    """Validate a method's parameters from the form (strings or numbers); return the non-default values typed.

    Parameters that name a model (declared with `param(..., model=True)`, e.g. draft_model's `draft`) must be
    'self' / 'self:N' or on the allow-list: the public demo loads nothing else (a bare hub id like `gpt2` too)."""
    cls = methods.get(name)
    raw = {k: v for k, v in (raw or {}).items()}
    if cls.Params is None:
        if any(v not in (None, "") for v in raw.values()):
            raise ParamError(f"{name} takes no parameters")
        return {}
    types = {d["name"]: d["type"] for d in describe(cls.Params)}
    for k, v in raw.items():
        if v is None or (isinstance(v, str) and not v.strip() and types.get(k) not in (None, "str")):
            raise ParamError(f"parameter {k} of {name} is empty")
    p = build(cls.Params, raw)
    out = {}
    for f in dataclasses.fields(p):
        v = getattr(p, f.name)
        if f.metadata.get("model") and not is_self_spec(v) and v not in pool.allowed:
            raise ParamError(f"parameter {f.name}={v!r} names a model that is not on this app's allow-list "
                             f"({', '.join(pool.allowed)})")
        if v != f.default:
            out[f.name] = v
    return out


@dataclass(frozen=True)
class Request:
    model: str
    method: str
    prompt: str
    max_new_tokens: int
    sampling: Any
    params: dict
    chat: bool


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
    """The coloured token stream; a baseline's tokens are the target's own, shown as autoregressive tokens."""
    baseline = method in methods.REGISTRY and methods.get(method).kind == "baseline"
    return views.token_stream_html(steps, autoregressive=baseline, note=note)


# ---- metrics text -----------------------------------------------------------------------------------------

def metrics_md(steps: list[Step]) -> str:
    if not steps:
        return ""
    m = M.compute(steps)
    acc = f"{m.accepted}/{m.drafted} ({m.draft_acceptance_rate:.0%})" if m.drafted else "-"
    return (f"**{m.tokens_per_s:.1f}** tok/s · mean acceptance length **{m.mean_accept_len:.2f}** · "
            f"target forwards **{m.target_forwards}** · {m.new_tokens} tokens in {m.rounds} rounds · "
            f"draft tokens accepted {acc}")


def speed_md(steps: list[Step], lm: LM) -> str:
    """The run against plain decoding on this machine: what the latency curve predicts for its rounds, and what
    its decode rounds measured (their tokens/s times the curve's one-token step). "" when no curve is at hand."""
    from . import sizing

    try:
        curve = sizing.latency_curve(lm)  # cached per model, device, dtype and backend (measured once otherwise)
    except Exception:  # noqa: BLE001  (an optional figure: a failure leaves it out, with the traceback in the log)
        log.exception("latency curve")
        return ""
    expected = sizing.expected_speedup(steps, curve)
    decode = [s for s in steps if s.kind == "decode"]
    seconds = sum(s.timing.total for s in decode)
    if expected is None or seconds <= 0:
        return ""
    measured = sum(len(s.tokens) for s in decode) / seconds * curve.t(0)
    return (f"\n\nvs plain decoding on this machine: expected **×{expected:.2f}** (its latency curve), measured "
            f"**×{measured:.2f}** (the decode rounds' tokens/s × the curve's one-token step, {curve.t(0) * 1e3:.0f} ms)")


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


# ---- the app ----------------------------------------------------------------------------------------------

class App:
    """Everything the UI calls. One per process; `pool` is shared by all visitors."""

    def __init__(self, config: AppConfig | None = None, pool: ModelPool | None = None):
        self.config = config or AppConfig()
        self.pool = pool or ModelPool(self.config.models, dtype=self.config.dtype, device=self.config.device,
                                      backend=self.config.backend)
        self.tmp = Path(tempfile.mkdtemp(prefix="labkit-app-"))

    # -- shared plumbing --

    def request(self, model, method, prompt, max_new_tokens, mode, temperature, top_k, top_p, seed, params,
                chat=True) -> Request:
        """Validate everything that can be checked without the model, in the order a user would fix it."""
        cfg = self.config
        model = self.pool.check(model)
        name = str(method or "").strip()
        methods.get(name)  # unknown method -> ParamError listing the registry
        return Request(model=model, method=name, prompt=parse_prompt(prompt, cfg),
                       max_new_tokens=parse_int("max new tokens", max_new_tokens, 1, cfg.max_new_tokens),
                       sampling=parse_sampling(mode, temperature, top_k, top_p, seed),
                       params=parse_params(name, params, self.pool), chat=bool(chat))

    def _loading_status(self, model: str) -> str | None:
        if self.pool.loaded(model):
            return None
        return f"loading model {model} (first use in this server; later runs start at once)…"

    def _supports(self, name: str, lm: LM) -> None:
        engine.check_supported(methods.get(name), lm)

    busy_timeout = 5.0  # seconds a new run waits for the visitor's previous one (e.g. just after Stop)

    def _acquire(self, visitor: Visitor) -> bool:
        return visitor._busy.acquire(timeout=self.busy_timeout)

    # -- Live ----------------------------------------------------------------------------------------------

    def live(self, visitor: Visitor, model, method, prompt, max_new_tokens, mode="greedy", temperature=0.8,
             top_k=0, top_p=1.0, seed=0, params=None, chat=True) -> Iterator[LiveUpdate]:
        """Stream one generation: coloured text and metrics every step, the draft tree and the acceptance plot
        at most every `plot_interval` / `stats_interval` seconds, everything once more at the end."""
        stop = visitor.begin()
        try:
            if not self._acquire(visitor):
                yield LiveUpdate(error="another run of yours is still going: stop it or wait for it to finish",
                                 status="", done=True)
                return
            try:
                yield from self._live(visitor, stop, model, method, prompt, max_new_tokens, mode, temperature, top_k,
                                      top_p, seed, params, chat)
            finally:
                visitor._busy.release()
        finally:
            visitor.end(stop)

    def _live(self, visitor, stop, model, method, prompt, max_new_tokens, mode, temperature, top_k, top_p, seed,
              params, chat):
        cfg = self.config
        steps: list[Step] = []
        try:
            req = self.request(model, method, prompt, max_new_tokens, mode, temperature, top_k, top_p, seed, params,
                               chat)
            loading = self._loading_status(req.model)
            if loading:
                yield LiveUpdate(status=loading)
            session = visitor.session(self.pool, req.model)
            self._supports(req.method, session.lm)
            m, _, run_cfg = session.prepare(req.method, req.prompt, max_new_tokens=req.max_new_tokens,
                                            sampling=req.sampling, chat=req.chat, params=req.params)
            gen = session.stream(m, req.prompt, max_new_tokens=req.max_new_tokens, sampling=req.sampling,
                                 chat=req.chat, should_stop=stop.is_set)
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, USER_ERRORS):
                log.exception("live: unexpected error")
            yield LiveUpdate(error=_user_message(e), status="", done=True, **CLEARED_LIVE)  # not beside the last run
            return
        if stop.is_set():
            yield LiveUpdate(status="stopped before it started", done=True)
            return
        text_t, tree_t, stats_t = Throttle(cfg.text_interval), Throttle(cfg.plot_interval), Throttle(cfg.stats_interval)
        head = f"{req.method} on {req.model} ({session.lm.backend} path), {req.sampling.describe()}"
        error = ""
        try:
            for step in gen:
                steps.append(step)
                if not text_t.due():
                    continue
                u = LiveUpdate(html=stream_html(steps, req.method), text=views.plain_text(steps), metrics=metrics_md(steps),
                               status=f"{'stopping…' if stop.is_set() else 'generating:'} {head} · step {step.index} · "
                                      f"{sum(len(s.tokens) for s in steps)} tokens")
                if step.kind == "decode" and tree_t.due():
                    u.tree = FIGURES.draw(views.draft_tree, step)
                if stats_t.due():
                    u.stats = FIGURES.draw(views.acceptance_stats, steps)
                yield u
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, USER_ERRORS):
                log.exception("live: unexpected error while decoding")
            error = _user_message(e)
        if steps:
            key = visitor.add_run("live", f"{req.method} · {_short(req.prompt, 30)}", run_cfg, steps, cfg.max_runs,
                                  note=_finish_reason(steps, stop.is_set()))
        else:
            key = None
        visitor.last_live = key
        tree_step = views.showcase_step(steps) or (steps[-1] if steps else None)
        status = f"{_finish_reason(steps, stop.is_set())}: {head}" + (f" · saved as run “{key}”" if key else "")
        yield LiveUpdate(html=stream_html(steps, req.method), text=views.plain_text(steps),
                         tree=FIGURES.draw(views.draft_tree, tree_step) if tree_step else None,
                         stats=FIGURES.draw(views.acceptance_stats, steps) if steps else None,
                         metrics=metrics_md(steps) + (speed_md(steps, session.lm) if steps else ""), status=status,
                         error=error, done=True, steps=len(steps),
                         shown=steps.index(tree_step) if tree_step else -1)

    def live_step(self, visitor: Visitor, index: Any):
        """The draft tree of step `index` of the visitor's latest Live run (the slider under the tree)."""
        rec = visitor.runs.get(visitor.last_live or "")
        if rec is None or not rec.steps:
            return None
        try:
            i = parse_int("step", index, 0, len(rec.steps) - 1)
        except ValueError:
            i = len(rec.steps) - 1
        return FIGURES.draw(views.draft_tree, rec.steps[i])

    # -- Compare -------------------------------------------------------------------------------------------

    def compare(self, visitor: Visitor, model, names, prompt, max_new_tokens, mode="greedy", temperature=0.8,
                top_k=0, top_p=1.0, seed=0, params_by_method=None, chat=True) -> Iterator[CompareUpdate]:
        """Run 2-4 methods (and the autoregressive baseline) on one prompt, one round of each in turn, so they
        stream side by side; then speedups vs the baseline and an identical-output verdict."""
        stop = visitor.begin()
        try:
            if not self._acquire(visitor):
                yield CompareUpdate(error="another run of yours is still going: stop it or wait for it to finish",
                                    done=True)
                return
            try:
                yield from self._compare(visitor, stop, model, names, prompt, max_new_tokens, mode, temperature,
                                         top_k, top_p, seed, params_by_method or {}, chat)
            finally:
                visitor._busy.release()
        finally:
            visitor.end(stop)

    def _compare(self, visitor, stop, model, names, prompt, max_new_tokens, mode, temperature, top_k, top_p, seed,
                 params_by_method, chat):
        cfg = self.config
        try:
            picked = [str(n).strip() for n in (names or []) if str(n).strip()]
            if len(set(picked)) != len(picked):
                raise ValueError("a method is picked twice")
            if not 2 <= len(picked) <= MAX_COMPARE:
                raise ValueError(f"pick 2 to {MAX_COMPARE} methods to compare (got {len(picked)}); the autoregressive "
                                 "baseline always runs too")
            order = [BASELINE] + [n for n in picked if n != BASELINE]
            reqs = [self.request(model, n, prompt, max_new_tokens, mode, temperature, top_k, top_p, seed,
                                 params_by_method.get(n), chat) for n in order]
            loading = self._loading_status(reqs[0].model)
            if loading:
                yield CompareUpdate(status=loading)
            session = visitor.session(self.pool, reqs[0].model)
            for r in reqs:
                self._supports(r.method, session.lm)
            lanes = []
            for r in reqs:
                m, ids, run_cfg = session.prepare(r.method, r.prompt, max_new_tokens=r.max_new_tokens,
                                                  sampling=r.sampling, chat=r.chat, params=r.params)
                gen = session.stream(m, r.prompt, max_new_tokens=r.max_new_tokens, sampling=r.sampling, chat=r.chat,
                                     should_stop=stop.is_set)
                lanes.append({"name": r.method, "gen": gen, "steps": [], "cfg": run_cfg, "ids": ids, "error": "",
                              "done": False})
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, USER_ERRORS):
                log.exception("compare: unexpected error")
            yield CompareUpdate(error=_user_message(e), done=True, columns=[None] * COMPARE_COLUMNS, verdict="", plot=None)
            return
        if stop.is_set():
            yield CompareUpdate(status="stopped before it started", done=True)
            return
        text_t, plot_t = Throttle(cfg.text_interval), Throttle(cfg.plot_interval)
        head = f"{len(lanes)} methods on {reqs[0].model} ({session.lm.backend} path), {reqs[0].sampling.describe()}"
        cycle = 0
        while not all(l["done"] for l in lanes):
            # one round of each lane in turn, starting with a different lane every cycle: whatever slows the
            # round right after an update (the server serialising it) falls on every lane alike
            for lane in lanes[cycle % len(lanes):] + lanes[:cycle % len(lanes)]:
                if lane["done"]:
                    continue
                try:
                    lane["steps"].append(next(lane["gen"]))
                except StopIteration:
                    lane["done"] = True
                except Exception as e:  # noqa: BLE001
                    if not isinstance(e, USER_ERRORS):
                        log.exception("compare: unexpected error in %s", lane["name"])
                    lane["error"], lane["done"] = _user_message(e), True
            cycle += 1
            if not text_t.due():
                continue
            u = CompareUpdate(columns=self._columns(lanes),
                              status=f"{'stopping…' if stop.is_set() else 'generating:'} {head}")
            if plot_t.due():
                u.plot = FIGURES.draw(views.side_by_side, {l["name"]: l["steps"] for l in lanes}, partial=True)
            yield u
        stopped = stop.is_set()
        for lane in lanes:
            lane["stopped"] = stopped and not (lane["steps"] and lane["steps"][-1].finished)
        for lane in lanes:
            if lane["steps"]:
                visitor.add_run("compare", f"{lane['name']} · {_short(reqs[0].prompt, 30)}", lane["cfg"],
                                lane["steps"], cfg.max_runs, note=_finish_reason(lane["steps"], stopped))
        final = FIGURES.draw(views.side_by_side, {l["name"]: l["steps"] for l in lanes},
                           partial=any(l.get("stopped") for l in lanes))
        yield CompareUpdate(status="verifying outputs…", columns=self._columns(lanes), plot=final)
        verdict = compare_verdict(session.lm, lanes, reqs[0].sampling, stopped)
        # the final figure again with the verdict: it is the last word, whatever the browser rendered before
        yield CompareUpdate(columns=self._columns(lanes), verdict=verdict, plot=final,
                            status=f"{'stopped' if stopped else 'done'}: {head}", done=True)

    def _columns(self, lanes) -> list:
        cols: list = []
        for lane in lanes:
            info = methods.info(lane["name"])
            tag = "baseline" if lane["name"] == BASELINE else ("lossless" if info["lossless"] else "LOSSY")
            state = (" · ■ stopped" if lane.get("stopped") else
                     " · ✓ done" if lane["done"] and not lane["error"] else "")
            title = f"**{lane['name']}** · {tag}" + state
            # which settings run (Token Recycling's sizing, a draft model...): the method's own description
            setting = lane["cfg"].get("method_description") or ""
            body = (f"_{setting}_\n\n" if setting and setting != info["title"] else "") + metrics_md(lane["steps"]) + \
                (f"\n\n⚠ {lane['error']}" if lane["error"] else "")
            cols.append(Column(title=title, html=stream_html(lane["steps"], lane["name"], note=False), metrics=body))
        return cols + [None] * (COMPARE_COLUMNS - len(cols))

    # -- Trace explorer ------------------------------------------------------------------------------------

    def explorer(self, visitor: Visitor, key: str | None = None, index: Any = None) -> ExplorerUpdate:
        """The explorer's state for run `key` (default: the visitor's selected run, else the newest) at step
        `index` (default: the last step that drafted a tree)."""
        choices = list(visitor.runs)
        if not choices:
            return ExplorerUpdate(message="no runs yet: generate in Live or Compare, or upload a trace (.jsonl)")
        key = key if key in visitor.runs else (visitor.selected if visitor.selected in visitor.runs else choices[-1])
        visitor.selected = key
        rec = visitor.runs[key]
        steps = rec.steps
        n = len(steps)
        if index is None or index == "":
            best = views.showcase_step(steps)
            i = steps.index(best) if best is not None else n - 1
        else:
            try:
                i = parse_int("step", index, None, None)
            except ValueError:
                i = n - 1
        i = max(0, min(n - 1, i))
        return ExplorerUpdate(choices=choices, selected=key, max_step=max(n - 1, 0), step=i,
                              view=self.step_view(rec, i), download=self.trace_file(visitor, key),
                              message=self._run_message(rec))

    def _run_message(self, rec: RunRecord) -> str:
        c = rec.config or {}
        bits = [f"**{rec.key}**", f"{len(rec.steps)} steps"]
        if c.get("method"):
            bits.append(f"method `{c['method']}`" + ("" if c.get("lossless", True) else " (LOSSY)"))
        if c.get("model"):
            bits.append(f"model `{c['model']}`")
        if isinstance(c.get("sampling"), dict):
            s = c["sampling"]
            bits.append("greedy" if not s.get("temperature") else f"sampling T={s.get('temperature')}")
        if rec.note:
            bits.append(rec.note)
        return " · ".join(bits)

    def step_view(self, rec: RunRecord, i: int) -> StepView:
        steps = rec.steps
        if not steps:
            return StepView(summary="this run has no steps")
        s = steps[i]
        method = (rec.config or {}).get("method")
        acc_text = "".join(s.nodes[j].text for j in s.accepted if j < len(s.nodes))
        t = s.timing
        summary = (f"**Step {s.index}** ({s.kind}) of {len(steps) - 1} · root {s.root_text!r} · "
                   f"{len(s.nodes)} draft nodes, {len(s.accepted)} accepted"
                   + (f" ({acc_text!r})" if acc_text else "")
                   + f" + bonus {s.bonus_text!r} ({s.bonus_how}) → committed {s.text!r} · target forwards "
                     f"{s.target_forwards}, draft forwards {s.draft_forwards} · KV length {s.kv_len} · "
                     f"draft {t.draft * 1e3:.1f} ms, verify {t.verify * 1e3:.1f} ms, accept {t.accept * 1e3:.1f} ms, "
                     f"commit {t.commit * 1e3:.1f} ms" + (f" · finished: {s.finished}" if s.finished else ""))
        rows = views.decisions(s)
        before = len(FIGURES.errors)
        view = StepView(summary=summary, decisions=rows, state=s.state or {},
                        tree=FIGURES.draw(views.draft_tree, s), mask=FIGURES.draw(views.tree_mask, s) if s.kind == "decode" else None,
                        state_plot=FIGURES.draw(views.method_state, s, method=method, token_text=self._token_text(rec)))
        frame = next((e for e in rec.events if not isinstance(e, Step) and getattr(e, "step", None) == s.index
                      and hasattr(e, "layers")), None)
        if frame is not None:
            view.sparsity = FIGURES.draw(sparsity_views.layer_map, frame)
        errors = FIGURES.errors[before:]
        if errors:
            view.error = "some plots of this step could not be drawn: " + "; ".join(errors)
        return view

    def _token_text(self, rec: RunRecord) -> Callable[[int], str] | None:
        """Labels token ids with the run's tokenizer when that model is already loaded (never loads one)."""
        name = (rec.config or {}).get("model")
        if not isinstance(name, str) or name not in self.pool.allowed or not self.pool.loaded(name):
            return None
        lm = self.pool.get(name)
        return lambda t: lm.token_texts([t])[0]

    def trace_file(self, visitor: Visitor, key: str) -> str | None:
        rec = visitor.runs.get(key)
        if rec is None:
            return None
        d = self.tmp / visitor.id
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{_slug(key)}.jsonl"
        if not path.exists():
            TR.save_trace(path, rec.config, rec.events)
        keep = {f"{_slug(k)}.jsonl" for k in visitor.runs}
        for old in d.glob("*.jsonl"):  # files of runs the visitor no longer has
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return str(path)

    def upload(self, visitor: Visitor, path: Any) -> ExplorerUpdate:
        """Read an uploaded trace. On any problem: an error line, and the visitor's runs and selection stay."""
        try:
            if not path:
                raise TraceError("no file was uploaded")
            p = Path(getattr(path, "name", path))
            size = p.stat().st_size
            if size > self.config.max_upload_mb * 1e6:
                raise TraceError(f"the file is {size / 1e6:.1f} MB; traces up to {self.config.max_upload_mb:g} MB "
                                 "are accepted")
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise TraceError("the file is not UTF-8 text: not a labkit trace") from None
            trace, skipped = parse_upload(text)
        except (TraceError, OSError) as e:
            up = self.explorer(visitor)
            up.error = f"could not read the upload: {_user_message(e) if isinstance(e, TraceError) else 'cannot open the file'}"
            return up
        except Exception as e:  # noqa: BLE001
            log.exception("upload: unexpected error")
            up = self.explorer(visitor)
            up.error = f"could not read the upload: {_user_message(e)}"
            return up
        note = []
        if trace.truncated:
            note.append("the last line was cut off (an interrupted run) and was dropped")
        if skipped:
            note.append(f"{skipped} event(s) of types this app does not show were skipped")
        method = (trace.config or {}).get("method", "?")
        key = visitor.add_run("upload", f"{p.name} ({method})", trace.config, trace.events, self.config.max_runs,
                              note="; ".join(note))
        up = self.explorer(visitor, key)
        up.message = f"loaded {p.name}: {len(trace.steps)} steps" + (f" ({'; '.join(note)})" if note else "") \
            + " · " + up.message
        return up

    # -- Bench ---------------------------------------------------------------------------------------------

    def bench(self, visitor: Visitor, model, names, categories, n, max_new_tokens,
              progress: Callable[[float, str], None] | None = None) -> Iterator[BenchUpdate]:
        stop = visitor.begin()
        try:
            if not self._acquire(visitor):
                yield BenchUpdate(error="another run of yours is still going: stop it or wait for it to finish",
                                  done=True)
                return
            try:
                yield from self._bench(visitor, stop, model, names, categories, n, max_new_tokens, progress)
            finally:
                visitor._busy.release()
        finally:
            visitor.end(stop)

    def _bench(self, visitor, stop, model, names, categories, n, max_new_tokens, progress):
        from . import bench as B

        cfg = self.config
        try:
            model = self.pool.check(model)
            picked = [str(x).strip() for x in (names or []) if str(x).strip()]
            if not picked:
                raise ValueError("pick at least one method to benchmark (the autoregressive baseline always runs)")
            for x in picked:
                methods.get(x)
            order = [BASELINE] + [x for x in dict.fromkeys(picked) if x != BASELINE]
            cats = [str(c).strip() for c in (categories or []) if str(c).strip()]
            if not cats:
                raise ValueError("pick at least one Spec-Bench category")
            n = parse_int("questions per category", n, 1, cfg.bench_max_per_category)
            max_new = parse_int("max new tokens", max_new_tokens, 8, cfg.bench_max_new_tokens)
            questions = B.select(B.load_questions(), n, cats)
            loading = self._loading_status(model)
            if loading:
                yield BenchUpdate(status=loading)
            lm = self.pool.get(model)
            for x in order:
                self._supports(x, lm)
            lab = Session(lm=lm)  # fresh method state, as `labkit bench` does
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, USER_ERRORS):
                log.exception("bench: unexpected error")
            yield BenchUpdate(error=_user_message(e), done=True, rows=[], plot=None)
            return
        total = len(questions) * len(order)
        collected: list = []  # bench records (bench.run_method)
        report = progress or (lambda frac, desc: None)
        report(0.0, "warming up")
        yield BenchUpdate(status=f"warming up {len(order)} methods…", progress=0.0)
        try:
            # the bench's own harness: warm-up on a question outside the selection, then interleaved rounds
            specs = [B.Spec.parse(x) for x in order]
            instances = {s.label: lab.method(s.label) for s in specs}
            chosen = {q["question_id"] for q in questions}
            warm = [q for q in B.load_questions() if q["question_id"] not in chosen][:1]
            B.warm_up(lm, specs, instances, warm, max_new_tokens=min(16, max_new), sampling=GREEDY, curve=None)
            records = B.interleaved(lm, specs, instances, questions, max_new_tokens=max_new, curve=None,
                                    sampling_for=lambda q: GREEDY, model_id=lambda _label: model,
                                    should_stop=stop.is_set)
            for rec in records:
                collected.append(rec)
                desc = (f"{len(collected)}/{total}: {rec['method']} on {rec['bench_category']} "
                        f"#{rec['question_id']}")
                report(len(collected) / total, desc)
                yield BenchUpdate(rows=bench_rows(collected, order), status=desc, progress=len(collected) / total)
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, USER_ERRORS):
                log.exception("bench: unexpected error")
            yield BenchUpdate(rows=bench_rows(collected, order), error=_user_message(e), done=True)
            return
        stopped = stop.is_set()
        rows = bench_rows(collected, order)
        plot = FIGURES.draw(views.bench_summary, B.table(collected), clock="wall",
                          title=f"{len(questions)} questions, {max_new} new tokens max, wall time") if collected else None
        yield BenchUpdate(rows=rows, plot=plot, status=("stopped" if stopped else "done") + f": {len(collected)} runs on {model}, "
                                 f"greedy, {max_new} new tokens max", progress=1.0, done=True)

    # -- Sparsity ------------------------------------------------------------------------------------------

    def sparsity_policies(self) -> list[tuple[str, str]]:
        """(label, name) of every registered KV policy."""
        out = []
        for name in sparsity.REGISTRY:
            info = sparsity.info(name)
            out.append((f"{name} · {info['title']}", name))
        return out

    def sparsity(self, visitor: Visitor, model, policy, budget, prompt, max_new_tokens, method=BASELINE,
                 chat=True) -> Iterator[SparsityUpdate]:
        """Decode under a KV-selection policy: the text, the latest frame's layer x position heatmap, the cache
        residency timeline and fidelity vs dense (recall, KL, top-1 agreement), redrawn at most every
        `plot_interval` / `stats_interval` seconds."""
        stop = visitor.begin()
        try:
            if not self._acquire(visitor):
                yield SparsityUpdate(error="another run of yours is still going: stop it or wait for it to finish",
                                     done=True)
                return
            try:
                yield from self._sparsity(visitor, stop, model, policy, budget, prompt, max_new_tokens, method, chat)
            finally:
                visitor._busy.release()
        finally:
            visitor.end(stop)

    def _sparsity(self, visitor, stop, model, policy, budget, prompt, max_new_tokens, method, chat):
        cfg = self.config
        try:
            self.pool.check(model)
            name = str(policy or "").strip()
            if not name:
                raise ParamError("pick a KV policy")
            info = sparsity.info(name)  # unknown policy -> ParamError listing the registry
            params = {}
            if any(p["name"] == "budget" for p in info["params"]):
                params["budget"] = parse_int("KV budget", budget, 1, None)
            sparsity.create(name, params)  # bad budget for this policy -> ParamError
            req = self.request(model, method or BASELINE, prompt, max_new_tokens, "greedy", None, None, None, 0,
                               None, chat)
            if methods.get(req.method).custom_loop:
                raise ValueError(f"{req.method} runs its own loop; pick a method that verifies through the engine")
            loading = self._loading_status(req.model)
            if loading:
                yield SparsityUpdate(status=loading)
            session = visitor.session(self.pool, req.model)
            self._supports(req.method, session.lm)
            opts = sparsity.Options(policy=name, params=params)
            m, _, run_cfg = session.prepare(req.method, req.prompt, max_new_tokens=req.max_new_tokens,
                                            sampling=req.sampling, chat=req.chat)
            run_cfg = {**run_cfg, "sparsity": sparsity.describe(opts)}
            gen = session.stream(m, req.prompt, max_new_tokens=req.max_new_tokens, sampling=req.sampling,
                                 chat=req.chat, should_stop=stop.is_set, sparsity=opts)
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, USER_ERRORS):
                log.exception("sparsity: unexpected error")
            yield SparsityUpdate(error=_user_message(e), done=True, html="", metrics="", heatmap=None, timeline=None, fidelity=None)
            return
        if stop.is_set():
            yield SparsityUpdate(status="stopped before it started", done=True)
            return
        text_t, heat_t, slow_t = Throttle(cfg.text_interval), Throttle(cfg.plot_interval), Throttle(cfg.stats_interval)
        head = f"{run_cfg['sparsity']} · {req.method} on {req.model}"
        events, steps, frames = [], [], []
        error = ""
        try:
            for e in gen:
                events.append(e)
                if isinstance(e, Step):
                    steps.append(e)
                    continue
                frames.append(e)
                if not text_t.due():
                    continue
                u = SparsityUpdate(html=stream_html(steps, req.method), metrics=sparsity_md(steps, frames),
                                   status=f"{'stopping…' if stop.is_set() else 'generating:'} {head} · step {e.step}")
                if heat_t.due():
                    u.heatmap = FIGURES.draw(sparsity_views.layer_map, e)
                if slow_t.due():
                    u.timeline = FIGURES.draw(sparsity_views.residency_timeline, frames)
                    u.fidelity = FIGURES.draw(sparsity_views.fidelity, frames)
                yield u
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, USER_ERRORS):
                log.exception("sparsity: unexpected error while decoding")
            error = _user_message(e)
        stopped = stop.is_set()
        key = None
        if steps:
            key = visitor.add_run("sparsity", f"{name} · {req.method} · {_short(req.prompt, 24)}", run_cfg, events,
                                  cfg.max_runs, note=_finish_reason(steps, stopped))
        last = frames[-1] if frames else None
        yield SparsityUpdate(html=stream_html(steps, req.method), metrics=sparsity_md(steps, frames),
                             heatmap=FIGURES.draw(sparsity_views.layer_map, last) if last else None,
                             timeline=FIGURES.draw(sparsity_views.residency_timeline, frames) if frames else None,
                             fidelity=FIGURES.draw(sparsity_views.fidelity, frames) if frames else None,
                             status=f"{_finish_reason(steps, stopped)}: {head}"
                                    + (f" · saved as run “{key}”" if key else ""), error=error, done=True)


def sparsity_md(steps: list[Step], frames: list) -> str:
    """Fidelity of the policy vs dense attention, averaged over the decode rounds so far."""
    dec = [f for f in frames if getattr(f, "kind", "") == "decode"]

    def mean(attr):
        vals = [getattr(f, attr) for f in dec if getattr(f, attr, None) is not None]
        return sum(vals) / len(vals) if vals else None

    recall, kl, top1, kv = mean("recall"), mean("kl"), mean("top1"), mean("kv_ratio")
    parts = [f"attention recall **{recall:.3f}**" if recall is not None else "attention recall -",
             f"KL(dense ‖ policy) **{kl:.4f}** nats" if kl is not None else "KL -",
             f"top-1 agreement **{top1:.0%}**" if top1 is not None else "top-1 agreement -",
             f"KV read **{kv:.0%}** of dense" if kv is not None else "KV read -"]
    m = M.compute(steps) if steps else None
    if m is not None:
        parts.append(f"{m.new_tokens} tokens, {m.tokens_per_s:.1f} tok/s")
    return " · ".join(parts) + f" (mean over {len(dec)} decode rounds)"


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60].strip("_") or "run"


def parse_upload(text: str) -> tuple[TR.Trace, int]:
    """parse_trace, after dropping event lines whose type this process does not know (consumers skip event
    types they do not handle) and checking that the steps are well-formed trees. Returns (trace, skipped)."""
    # (labkit.sparsity, imported above, registered its frames' event type)
    lines = text.split("\n")
    kept, skipped = [], 0
    for i, line in enumerate(lines):
        if i > 0 and line.strip():
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("type"), str) and data["type"] not in TR.EVENT_TYPES:
                skipped += 1
                continue
        kept.append(line)
    trace = TR.parse_trace("\n".join(kept))
    steps = trace.steps
    if not steps:
        raise TraceError("the trace has no steps")
    for s in steps:
        for j, node in enumerate(s.nodes):
            if not -1 <= node.parent < j:
                raise TraceError(f"step {s.index}: node {j} has parent {node.parent} (parents must come first)")
        if any(not 0 <= j < len(s.nodes) for j in s.accepted):
            raise TraceError(f"step {s.index}: accepted path {list(s.accepted)} points outside the tree")
    return trace, skipped


# ---- Compare verdict --------------------------------------------------------------------------------------

def compare_verdict(lm: LM, lanes: list[dict], sampling, stopped: bool) -> str:
    """Markdown: per method, tokens/s, speedup vs the baseline, mean acceptance length, and whether its output
    is token-identical to the baseline's (greedy); on a mismatch of a lossless method, the losslessness
    explainer's first-divergence report (top-2 margin, float64 re-run)."""
    from . import check as C
    from . import sizing

    base = lanes[0]
    base_m = M.compute(base["steps"]) if base["steps"] else None
    base_tok = [t for s in base["steps"] for t in s.tokens]
    try:
        curve = sizing.latency_curve(lm)  # cached per model, device, dtype and backend (measured once otherwise)
    except Exception:  # noqa: BLE001  (the expected column is optional: a failure leaves it empty)
        log.exception("compare: latency curve")
        curve = None
    rows = ["| method | tok/s | speedup | expected | accept len | forwards | output vs baseline |",
            "|---|---:|---:|---:|---:|---:|---|"]
    notes = []
    for lane in lanes:
        if not lane["steps"]:
            rows.append(f"| {lane['name']} | - | - | - | - | - | {lane['error'] or 'no output'} |")
            continue
        m = M.compute(lane["steps"])
        speed = m.tokens_per_s / base_m.tokens_per_s if base_m and base_m.tokens_per_s else float("nan")
        toks = [t for s in lane["steps"] for t in s.tokens]
        lossless = methods.info(lane["name"])["lossless"]
        if lane is base:
            verdict = "reference"
        elif lane["error"] or base["error"]:
            verdict = "not compared (a run failed)"
        elif stopped and (len(toks) != len(base_tok) or not lane["steps"][-1].finished):
            verdict = "not compared (stopped)"
        elif not sampling.greedy:
            verdict = ("same tokens" if toks == base_tok else "different tokens (expected when sampling: lossless "
                       "methods keep the distribution, not the exact draw)")
        elif toks == base_tok:
            verdict = "✓ identical"
        elif not lossless:
            verdict = "differs (lossy method: expected)"
        else:
            pos = C.first_divergence(toks, base_tok)
            m_tok = toks[pos] if pos < len(toks) else -1
            b_tok = base_tok[pos] if pos < len(base_tok) else -1
            label = lambda t: lm.token_texts([t])[0] if t >= 0 else "<end>"  # noqa: E731
            try:
                margin, side, why = C.explain(lm, list(base["ids"]) + base_tok[:pos], m_tok, b_tok)
                res = C.CheckResult(base["cfg"].get("prompt", ""), False, len(toks), len(base_tok), pos, label(m_tok),
                                    label(b_tok), margin, side, why)
                notes.append(f"- **{lane['name']}**: {res.line()}")
            except Exception as e:  # noqa: BLE001
                log.exception("compare: explainer failed")
                notes.append(f"- **{lane['name']}**: first divergence at token {pos}: {label(m_tok)!r} vs "
                             f"{label(b_tok)!r} (the explainer failed: {_user_message(e)})")
            verdict = f"✗ differs from token {pos}"
        expected = sizing.expected_speedup(lane["steps"], curve)
        rows.append(f"| {lane['name']}{'' if lossless else ' (LOSSY)'} | {m.tokens_per_s:.1f} | "
                    f"{speed:.2f}× | {'-' if expected is None else f'{expected:.2f}×'} | {m.mean_accept_len:.2f} | "
                    f"{m.target_forwards} | {verdict} |")
    out = "\n".join(rows) + f"\n\n_Accept len: {M.MAL_NOTE}._"
    if curve is not None:
        out += (f"\n\n_Execution path: {backends.describe(lm.backend)}. Expected = tokens per round x t(1 token) / "
                f"t(the round's tree) from this machine's latency curve (t(8) = {curve.t(7) / curve.t(0):.2f} x "
                f"t(1)), i.e. the speedup if drafting and bookkeeping cost nothing; measured speedups on a shared "
                f"CPU vary by 10-20% from run to run._")
    if notes:
        out += "\n\n**First divergence** (losslessness explainer):\n" + "\n".join(notes)
    if not sampling.greedy:
        out += "\n\n_Sampling: token-identical outputs are only expected in greedy mode._"
    return out


# ---- Bench tables and plots -------------------------------------------------------------------------------

def bench_rows(collected: list, order: Sequence[str]) -> list[dict]:
    """Flat rows per (category, method), category 'all' first: questions, tokens, tokens/s, speedup vs the
    autoregressive baseline, mean acceptance length, identical outputs, as labkit.bench tabulates them."""
    from . import bench as B

    out = []
    for r in B.table(collected) if collected else []:
        sp = r.get("speedup")
        same, n = r.get("identical_vs_baseline", (0, 0))
        out.append({"category": "all" if r["category"] == "overall" else r["category"], "method": r["method"],
                    "questions": r["questions"], "tokens": r["new_tokens"], "tokens_per_s": r["tokens_per_s"],
                    "speedup": sp["tokens_per_s"] if isinstance(sp, dict) else float("nan"),
                    "mean_accept_len": r["mean_accept_len"], "identical": f"{same}/{n}"})
    rank = {m: i for i, m in enumerate(order)}
    cat = {c: i for i, c in enumerate(("all",) + tuple(B.CATEGORIES))}
    return sorted(out, key=lambda r: (cat.get(r["category"], len(cat)), rank.get(r["method"], len(rank))))


BENCH_HEADERS = ["category", "method", "questions", "tokens", "tok/s", "speedup", "accept len", "identical"]


def bench_table(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        out.append([r["category"], r["method"], r["questions"], r["tokens"], f"{r['tokens_per_s']:.1f}",
                    f"{r['speedup']:.2f}×" if math.isfinite(r["speedup"]) else "-", f"{r['mean_accept_len']:.2f}",
                    r["identical"]])
    return out


def collect_params(values: Sequence[Any], layout: Sequence[tuple[str, str]]) -> dict[str, dict]:
    """Flat form values (as app.py passes them) -> {method: {param: value}}, using the (method, param) layout."""
    out: dict[str, dict] = {}
    for (m, p), v in zip(layout, values):
        out.setdefault(m, {})[p] = v
    return out


def param_layout() -> list[tuple[str, dict]]:
    """(method, param description) for every parameter of every registered method, in registry order."""
    return [(name, p) for name in methods.REGISTRY for p in describe(methods.REGISTRY[name].Params)]
