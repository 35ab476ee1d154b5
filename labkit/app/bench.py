"""The Bench tab: labkit.bench's harness on a few Spec-Bench questions, its table and chart."""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

from .. import methods, views
from ..sampling import GREEDY
from ..session import Session
from .config import BASELINE, USER_ERRORS, log
from .updates import BenchUpdate, FIGURES, _user_message
from .validate import parse_int
from .visitor import Visitor



class BenchTab:
    """The bench tab's handlers (a part of App: they use its config, pool and shared plumbing)."""

    # -- Bench ---------------------------------------------------------------------------------------------

    def bench(self, visitor: Visitor, model, names, categories, n, max_new_tokens,
              progress: Callable[[float, str], None] | None = None) -> Iterator[BenchUpdate]:
        return self._exclusive(visitor, BenchUpdate, lambda stop: self._bench(visitor, stop, model, names, categories,
                                                                              n, max_new_tokens, progress))

    def _bench(self, visitor, stop, model, names, categories, n, max_new_tokens, progress):
        from ..bench import Spec, interleaved, load_questions, select, table, warm_up
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
            questions = select(load_questions(), n, cats)
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
            specs = [Spec.parse(x) for x in order]
            instances = {s.label: lab.method(s.label) for s in specs}
            chosen = {q["question_id"] for q in questions}
            warm = [q for q in load_questions() if q["question_id"] not in chosen][:1]
            warm_up(lm, specs, instances, warm, max_new_tokens=min(16, max_new), sampling=GREEDY, curve=None)
            records = interleaved(lm, specs, instances, questions, max_new_tokens=max_new, curve=None,
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
        plot = FIGURES.draw(views.bench_summary, table(collected), clock="wall",
                          title=f"{len(questions)} questions, {max_new} new tokens max, wall time") if collected else None
        yield BenchUpdate(rows=rows, plot=plot, status=("stopped" if stopped else "done") + f": {len(collected)} runs on {model}, "
                                 f"greedy, {max_new} new tokens max", progress=1.0, done=True)


# ---- Bench tables and plots -------------------------------------------------------------------------------

def bench_rows(collected: list, order: Sequence[str]) -> list[dict]:
    """Flat rows per (category, method), category 'all' first: questions, tokens, tokens/s, speedup vs the
    autoregressive baseline, mean acceptance length, identical outputs, as labkit.bench tabulates them."""
    from ..bench import CATEGORIES, table

    out = []
    for r in table(collected) if collected else []:
        sp = r.get("speedup")
        same, n = r.get("identical_vs_baseline", (0, 0))
        out.append({"category": "all" if r["category"] == "overall" else r["category"], "method": r["method"],
                    "questions": r["questions"], "tokens": r["new_tokens"], "tokens_per_s": r["tokens_per_s"],
                    "speedup": sp["tokens_per_s"] if isinstance(sp, dict) else float("nan"),
                    "mean_accept_len": r["mean_accept_len"], "identical": f"{same}/{n}"})
    rank = {m: i for i, m in enumerate(order)}
    cat = {c: i for i, c in enumerate(("all",) + tuple(CATEGORIES))}
    return sorted(out, key=lambda r: (cat.get(r["category"], len(cat)), rank.get(r["method"], len(rank))))


BENCH_HEADERS = ["category", "method", "questions", "tokens", "tok/s", "speedup", "accept len", "identical"]


def bench_table(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        out.append([r["category"], r["method"], r["questions"], r["tokens"], f"{r['tokens_per_s']:.1f}",
                    f"{r['speedup']:.2f}×" if math.isfinite(r["speedup"]) else "-", f"{r['mean_accept_len']:.2f}",
                    r["identical"]])
    return out
