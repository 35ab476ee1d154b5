"""The Trace explorer tab: a visitor's runs and uploaded traces, step by step."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from .. import views
from ..trace import EVENT_TYPES, Trace, parse_trace, save_trace
from ..sparsity import views as sparsity_views
from ..trace import Step, TraceError
from .config import log
from .updates import ExplorerUpdate, FIGURES, StepView, _user_message
from .validate import parse_int
from .visitor import RunRecord, Visitor



class ExplorerTab:
    """The explorer tab's handlers (a part of App: they use its config, pool and shared plumbing)."""

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
            save_trace(path, rec.config, rec.events)
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


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60].strip("_") or "run"


def parse_upload(text: str) -> tuple[Trace, int]:
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
            if isinstance(data, dict) and isinstance(data.get("type"), str) and data["type"] not in EVENT_TYPES:
                skipped += 1
                continue
        kept.append(line)
    trace = parse_trace("\n".join(kept))
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
