"""One model shared by many runs (the app's visitors, a Compare's lanes): most runs only read it and may run
at once; a run that changes how the model computes while it runs (a sparsity capture switches its attention
function and hooks every layer; the benchmark switches its execution path for the `generate` rows) must run
alone, or another run would compute through the change.

    with hold(lm) as held: ...                   # engine.decode takes this for every run
    with hold(lm, exclusive=True) as held: ...   # sparsity.decode, sparse self-speculation, the bench's stock rows

`held` is True once the model is held; with `should_stop=` a waiting hold gives up when it returns True (the
app's Stop button), and `held` is False: the block must then do nothing.

A thread's own runs never wait for each other (a Compare interleaves its lanes in one thread, one round of each
in turn): exclusive waits only for other threads' runs, and a thread holding it may also read.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator


class ModelGate:
    def __init__(self):
        self._cond = threading.Condition()
        self._readers: dict[int, int] = {}  # thread id -> shared holds
        self._writer: int | None = None  # the thread holding exclusive
        self._depth = 0  # its nested exclusive holds

    def _others_reading(self, me: int) -> bool:
        return any(n for t, n in self._readers.items() if t != me)

    def wait_reason(self, exclusive: bool = False) -> str:
        """Why a hold taken by this thread now would wait ("" if it would not): for a status line while it does."""
        me = threading.get_ident()
        with self._cond:
            if self._writer is not None and self._writer != me:
                return "another run is changing how the model computes and runs alone; this one starts when it ends"
            if exclusive and self._others_reading(me):
                return "this run changes how the model computes, so it runs alone: it starts when the runs in " \
                       "progress end"
            return ""

    def _wait(self, blocked: Callable[[], bool], should_stop: Callable[[], bool] | None) -> bool:
        """Wait (holding the condition) until `blocked()` is False -> True, or until `should_stop()` -> False."""
        while blocked():
            if should_stop is not None and should_stop():
                return False
            self._cond.wait(timeout=None if should_stop is None else 0.1)
        return True

    @contextlib.contextmanager
    def shared(self, should_stop: Callable[[], bool] | None = None) -> Iterator[bool]:
        """Hold the model for reading; yields False (holding nothing) when `should_stop()` ended the wait."""
        me = threading.get_ident()
        with self._cond:
            if not self._wait(lambda: self._writer is not None and self._writer != me, should_stop):
                got = False
            else:
                got = True
                self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield got
        finally:
            if got:
                with self._cond:
                    self._readers[me] -= 1
                    if not self._readers[me]:
                        del self._readers[me]
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, should_stop: Callable[[], bool] | None = None) -> Iterator[bool]:
        """Hold the model alone; yields False (holding nothing) when `should_stop()` ended the wait."""
        me = threading.get_ident()
        with self._cond:
            got = self._wait(lambda: (self._writer is not None and self._writer != me) or self._others_reading(me),
                             should_stop)
            if got:
                self._writer = me
                self._depth += 1
        try:
            yield got
        finally:
            if got:
                with self._cond:
                    self._depth -= 1
                    if not self._depth:
                        self._writer = None
                    self._cond.notify_all()


def wait_reason(lm, exclusive: bool = False) -> str:
    """Why `hold(lm, exclusive)` would wait now ("" if it would not, or for an LM-like object without a gate)."""
    gate = getattr(lm, "gate", None)
    return gate.wait_reason(exclusive) if gate is not None else ""


def hold(lm, exclusive: bool = False, should_stop: Callable[[], bool] | None = None):
    """The model's gate, shared or exclusive, for a `with` block that receives True once held, or False when
    `should_stop()` became true while it waited (always True for an LM-like object without a gate)."""
    gate = getattr(lm, "gate", None)
    if gate is None:
        return contextlib.nullcontext(True)
    return gate.exclusive(should_stop) if exclusive else gate.shared(should_stop)
