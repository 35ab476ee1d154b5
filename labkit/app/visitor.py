"""One browser session's state (held in gr.State, never shared): its Sessions, its runs, its stop flags."""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

from ..session import Session
from ..trace import Step
from .config import ModelPool



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
