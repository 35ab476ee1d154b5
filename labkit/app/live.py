"""The Live tab: one generation streamed, its tree, statistics and speed; a step slider after the run."""
from __future__ import annotations

from typing import Any, Iterator

from .. import views
from ..trace import Step
from .config import USER_ERRORS, log
from .updates import CLEARED_LIVE, FIGURES, LiveUpdate, Throttle, _finish_reason, _short, _user_message, metrics_md, speed_md, stream_html
from .validate import parse_int
from .visitor import Visitor



class LiveTab:
    """The live tab's handlers (a part of App: they use its config, pool and shared plumbing)."""

    # -- Live ----------------------------------------------------------------------------------------------

    def live(self, visitor: Visitor, model, method, prompt, max_new_tokens, mode="greedy", temperature=0.8,
             top_k=0, top_p=1.0, seed=0, params=None, chat=True) -> Iterator[LiveUpdate]:
        """Stream one generation: coloured text and metrics every step, the draft tree and the acceptance plot
        at most every `plot_interval` / `stats_interval` seconds, everything once more at the end."""
        return self._exclusive(visitor, LiveUpdate, lambda stop: self._live(visitor, stop, model, method, prompt,
                                                                            max_new_tokens, mode, temperature, top_k,
                                                                            top_p, seed, params, chat))

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
            started = session.start(req.method, req.prompt, max_new_tokens=req.max_new_tokens, sampling=req.sampling,
                                    chat=req.chat, params=req.params, should_stop=stop.is_set)
            gen, run_cfg = started.steps, started.config
            waiting = self._waiting_status(session.lm, started.method.exclusive_model)
            if waiting:
                yield LiveUpdate(status=waiting)
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
