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

One module per concern: config (AppConfig, ModelPool, constants), visitor (per-session state), validate (every
input in one clear line), updates (what handlers yield, the text they show), and one module per tab (live,
compare, explorer, bench, sparsity), each a part of `App`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import engine, methods
from ..gate import wait_reason
from ..models import LM
from ..params import ParamError
from ..trace import Step
from .bench import BENCH_HEADERS, BenchTab, bench_rows, bench_table
from .compare import CompareTab, compare_verdict
from .config import (BASELINE, COMPARE_COLUMNS, MAX_COMPARE, MODES, UNCHANGED, USER_ERRORS, AppConfig, ModelPool,
                     log)
from .explorer import ExplorerTab, parse_upload
from .live import LiveTab
from .sparsity import SparsityTab, sparsity_md
from .updates import (CLEARED_LIVE, DECISION_HEADERS, FIGURES, BenchUpdate, Column, CompareUpdate, ExplorerUpdate,
                      Figures, LiveUpdate, SparsityUpdate, StepView, Throttle, metrics_md, speed_md, stream_html)
from .validate import (Request, collect_params, method_card, method_label, method_names, param_layout, parse_float,
                       parse_int, parse_params, parse_prompt, parse_sampling, policy_param_layout)
from .visitor import RunRecord, Visitor

__all__ = ["App", "AppConfig", "ModelPool", "Visitor", "RunRecord", "Request", "Figures", "FIGURES", "Throttle",
           "LiveUpdate", "Column", "CompareUpdate", "StepView", "ExplorerUpdate", "BenchUpdate", "SparsityUpdate",
           "UNCHANGED", "USER_ERRORS", "BASELINE", "MODES", "MAX_COMPARE", "COMPARE_COLUMNS", "CLEARED_LIVE",
           "DECISION_HEADERS", "BENCH_HEADERS", "compare_verdict", "bench_rows", "bench_table", "sparsity_md",
           "parse_upload", "stream_html", "metrics_md", "speed_md", "collect_params", "param_layout",
           "policy_param_layout", "method_card",
           "method_label", "method_names", "parse_int", "parse_float", "parse_prompt", "parse_sampling",
           "parse_params", "methods", "ParamError", "Step", "log"]


class App(LiveTab, CompareTab, ExplorerTab, BenchTab, SparsityTab):
    """Everything the UI calls. One per process; `pool` is shared by all visitors."""

    def __init__(self, config: AppConfig | None = None, pool: ModelPool | None = None):
        self.config = config or AppConfig()
        self.pool = pool or ModelPool(self.config.models, dtype=self.config.dtype, device=self.config.device,
                                      device_map=self.config.device_map, backend=self.config.backend)
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

    @staticmethod
    def _waiting_status(lm: LM, exclusive: bool) -> str | None:
        """The status while a run waits for another visitor's run to release the shared model (labkit.gate)."""
        reason = wait_reason(lm, exclusive)
        return f"waiting for the model: {reason}" if reason else None

    def _supports(self, name: str, lm: LM) -> None:
        engine.check_supported(methods.get(name), lm)

    busy_timeout = 5.0  # seconds a new run waits for the visitor's previous one (e.g. just after Stop)

    def _exclusive(self, visitor: Visitor, update: type, run: Callable[[Any], Iterator]) -> Iterator:
        """Run one tab's generator `run(stop)` as the visitor's only run: a fresh stop flag (armed by the click),
        the visitor's lock (a second run waits `busy_timeout` seconds, then is refused in one line), both
        released whatever happens."""
        stop = visitor.begin()
        try:
            if not visitor._busy.acquire(timeout=self.busy_timeout):
                yield update(error="another run of yours is still going: stop it or wait for it to finish",
                             done=True)
                return
            try:
                yield from run(stop)
            finally:
                visitor._busy.release()
        finally:
            visitor.end(stop)
