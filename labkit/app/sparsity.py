"""The Sparsity tab: decoding under a KV-selection policy, with its maps and fidelity against dense."""
from __future__ import annotations

from typing import Iterator

from .. import methods, sparsity
from ..metrics import compute as compute_metrics
from ..params import ParamError
from ..sparsity import views as sparsity_views
from ..trace import Step
from .config import BASELINE, USER_ERRORS, log
from .updates import FIGURES, SparsityUpdate, Throttle, _finish_reason, _short, _user_message, stream_html
from .validate import parse_int
from .visitor import Visitor



class SparsityTab:
    """The sparsity tab's handlers (a part of App: they use its config, pool and shared plumbing)."""

    # -- Sparsity ------------------------------------------------------------------------------------------

    def sparsity_policies(self) -> list[tuple[str, str]]:
        """(label, name) of every registered KV policy."""
        out = []
        for name in sparsity.REGISTRY:
            info = sparsity.info(name)
            out.append((f"{name} · {info['title']}", name))
        return out

    def sparsity(self, visitor: Visitor, model, policy, budget, prompt, max_new_tokens, method=BASELINE,
                 chat=True, params=None) -> Iterator[SparsityUpdate]:
        """Decode under a KV-selection policy (`params`: the policy's other settings, e.g. RazorAttention's
        compensation): the text, the latest frame's layer x position heatmap, the cache residency timeline and
        fidelity vs dense (recall, KL, top-1 agreement), redrawn at most every `plot_interval` / `stats_interval`
        seconds."""
        return self._exclusive(visitor, SparsityUpdate, lambda stop: self._sparsity(visitor, stop, model, policy,
                                                                                    budget, prompt, max_new_tokens,
                                                                                    method, chat, params))

    def _sparsity(self, visitor, stop, model, policy, budget, prompt, max_new_tokens, method, chat, params):
        cfg = self.config
        try:
            self.pool.check(model)
            name = str(policy or "").strip()
            if not name:
                raise ParamError("pick a KV policy")
            info = sparsity.info(name)  # unknown policy -> ParamError listing the registry
            params = dict(params or {})  # unknown or bad settings -> ParamError from sparsity.create below
            if any(p["name"] == "budget" for p in info["params"]):
                params["budget"] = parse_int("KV budget", budget, 1, None)
            sparsity.create(name, params)  # a bad budget or setting for this policy -> ParamError
            req = self.request(model, method or BASELINE, prompt, max_new_tokens, "greedy", None, None, None, 0,
                               None, chat)
            if methods.get(req.method).custom_loop:
                raise ValueError(f"{req.method} runs its own loop; pick a method that verifies through the engine")
            loading = self._loading_status(req.model)
            if loading:
                yield SparsityUpdate(status=loading)
            session = visitor.session(self.pool, req.model)
            started = session.start(req.method, req.prompt, max_new_tokens=req.max_new_tokens,
                                    sampling=req.sampling, chat=req.chat, should_stop=stop.is_set,
                                    sparsity=sparsity.Options(policy=name, params=params))
            gen, run_cfg = started.steps, started.config
            waiting = self._waiting_status(session.lm, True)  # the capture changes how the model computes
            if waiting:
                yield SparsityUpdate(status=waiting)
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
    m = compute_metrics(steps) if steps else None
    if m is not None:
        parts.append(f"{m.new_tokens} tokens, {m.tokens_per_s:.1f} tok/s")
    return " · ".join(parts) + f" (mean over {len(dec)} decode rounds)"
