"""The Compare tab: 2-4 methods and the baseline, one round of each in turn, then the verdict."""
from __future__ import annotations

from typing import Iterator

from .. import backends, methods, views
from ..metrics import MAL_NOTE, compute as compute_metrics
from ..models import LM
from .config import BASELINE, COMPARE_COLUMNS, MAX_COMPARE, USER_ERRORS, log
from .updates import Column, CompareUpdate, FIGURES, Throttle, _finish_reason, _short, _user_message, metrics_md, stream_html
from .visitor import Visitor



class CompareTab:
    """The compare tab's handlers (a part of App: they use its config, pool and shared plumbing)."""

    # -- Compare -------------------------------------------------------------------------------------------

    def compare(self, visitor: Visitor, model, names, prompt, max_new_tokens, mode="greedy", temperature=0.8,
                top_k=0, top_p=1.0, seed=0, params_by_method=None, chat=True) -> Iterator[CompareUpdate]:
        """Run 2-4 methods (and the autoregressive baseline) on one prompt, one round of each in turn, so they
        stream side by side; then speedups vs the baseline and an identical-output verdict."""
        return self._exclusive(visitor, CompareUpdate, lambda stop: self._compare(visitor, stop, model, names, prompt,
                                                                                  max_new_tokens, mode, temperature,
                                                                                  top_k, top_p, seed,
                                                                                  params_by_method or {}, chat))

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
            lanes = []
            for r in reqs:  # every lane is checked before any runs (a bad one fails the whole request)
                started = session.start(r.method, r.prompt, max_new_tokens=r.max_new_tokens, sampling=r.sampling,
                                        chat=r.chat, params=r.params, should_stop=stop.is_set)
                lanes.append({"name": r.method, "gen": started.steps, "steps": [], "cfg": started.config,
                              "ids": started.ids, "error": "", "done": False,
                              "exclusive": started.method.exclusive_model})
            waiting = self._waiting_status(session.lm, any(lane["exclusive"] for lane in lanes))
            if waiting:
                yield CompareUpdate(status=waiting)
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
        while not all(lane["done"] for lane in lanes):
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
                u.plot = FIGURES.draw(views.side_by_side, {lane["name"]: lane["steps"] for lane in lanes}, partial=True)
            yield u
        stopped = stop.is_set()
        for lane in lanes:
            lane["stopped"] = stopped and not (lane["steps"] and lane["steps"][-1].finished)
        for lane in lanes:
            if lane["steps"]:
                visitor.add_run("compare", f"{lane['name']} · {_short(reqs[0].prompt, 30)}", lane["cfg"],
                                lane["steps"], cfg.max_runs, note=_finish_reason(lane["steps"], stopped))
        final = FIGURES.draw(views.side_by_side, {lane["name"]: lane["steps"] for lane in lanes},
                           partial=any(lane.get("stopped") for lane in lanes))
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


# ---- Compare verdict --------------------------------------------------------------------------------------

def compare_verdict(lm: LM, lanes: list[dict], sampling, stopped: bool) -> str:
    """Markdown: per method, tokens/s, speedup vs the baseline, mean acceptance length, and whether its output
    is token-identical to the baseline's (greedy); on a mismatch of a lossless method, the losslessness
    explainer's first-divergence report (top-2 margin, float64 re-run)."""
    from .. import check
    from .. import latency

    base = lanes[0]
    base_m = compute_metrics(base["steps"]) if base["steps"] else None
    base_tok = [t for s in base["steps"] for t in s.tokens]
    try:
        curve = latency.latency_curve(lm)  # cached per model, device, dtype and backend (measured once otherwise)
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
        m = compute_metrics(lane["steps"])
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
            pos = check.first_divergence(toks, base_tok)
            m_tok = toks[pos] if pos < len(toks) else -1
            b_tok = base_tok[pos] if pos < len(base_tok) else -1
            def label(t: int) -> str:
                return check.token_label(lm, t)

            try:
                margin, side, why = check.explain(lm, list(base["ids"]) + base_tok[:pos], m_tok, b_tok)
                res = check.CheckResult(base["cfg"].get("prompt", ""), False, len(toks), len(base_tok), pos, label(m_tok),
                                    label(b_tok), margin, side, why)
                notes.append(f"- **{lane['name']}**: {res.line()}")
            except Exception as e:  # noqa: BLE001
                log.exception("compare: explainer failed")
                notes.append(f"- **{lane['name']}**: first divergence at token {pos}: {label(m_tok)!r} vs "
                             f"{label(b_tok)!r} (the explainer failed: {_user_message(e)})")
            verdict = f"✗ differs from token {pos}"
        expected = latency.expected_text(lane["steps"], curve)
        rows.append(f"| {lane['name']}{'' if lossless else ' (LOSSY)'} | {m.tokens_per_s:.1f} | "
                    f"{speed:.2f}× | {expected or '-'} | {m.mean_accept_len:.2f} | "
                    f"{m.target_forwards} | {verdict} |")
    out = "\n".join(rows) + f"\n\n_Accept len: {MAL_NOTE}._"
    if curve is not None:
        out += (f"\n\n_Execution path: {backends.describe(lm.backend)}. Expected = tokens per round x t(1 token) / "
                f"t(the round's tree) from this machine's latency curve (t(8) = {curve.t(7) / curve.t(0):.2f} x "
                f"t(1)), i.e. the speedup if drafting and bookkeeping cost nothing; where drafting took a real "
                f"share of the rounds (a draft model, or the target's own layers), the prediction also charges it, "
                f"at its measured cost relative to the same rounds' verify passes. Measured speedups on a shared "
                f"CPU vary by 10-20% from run to run._")
    if notes:
        out += "\n\n**First divergence** (losslessness explainer):\n" + "\n".join(notes)
    if not sampling.greedy:
        out += "\n\n_Sampling: token-identical outputs are only expected in greedy mode._"
    return out
