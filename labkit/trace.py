"""Step events and JSON-lines traces: the contract between decoders and everything that shows them.

A decoder yields one `Step` per round (propose -> verify -> accept -> commit). Events are frozen
dataclasses of plain Python values, so a trace is JSON lines: a header line (schema version and the
run's config), then one line per event. The same trace drives the CLI, notebooks, app, benchmark and
tests.

Files are written line by line and flushed, so an interrupted run leaves a readable file; a reader
drops a final line that was cut off mid-write (and says so in `Trace.truncated`).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import threading
import types
import typing
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SCHEMA = "labkit.trace"
SCHEMA_VERSION = 1

# Node decisions.
ACCEPTED, REJECTED, NOT_REACHED = "accepted", "rejected", "not_reached"
# How the bonus token (the target's own token that ends every round) was chosen.
BONUS_ARGMAX, BONUS_SAMPLED, BONUS_RESIDUAL = "argmax", "sampled", "resampled from residual"


@dataclass(frozen=True)
class Node:
    """One drafted token in a step's tree. `parent == -1` means the round's root (the last committed token)."""

    token: int
    parent: int
    depth: int
    status: str = NOT_REACHED  # accepted | rejected | not_reached
    text: str = ""
    draft_prob: float | None = None  # q(token | parent), when the draft source has a distribution
    target_prob: float | None = None  # p(token | parent) under the target (after temperature/top-k/top-p)
    accept_prob: float | None = None  # min(1, p/q) when a sampling rule decided
    draw: float | None = None  # the uniform draw u that decided, when sampling
    reason: str = ""


@dataclass(frozen=True)
class Timing:
    """Wall seconds per phase of one round; `total` also counts the loop's own bookkeeping. `start`: when the
    round began, in seconds since the run began (so a trace opens on a timeline: `labkit trace export --chrome`)."""

    draft: float = 0.0
    verify: float = 0.0
    accept: float = 0.0
    commit: float = 0.0
    total: float = 0.0
    start: float = 0.0


@dataclass(frozen=True)
class Step:
    """One round of a decoder.

    `tokens` are the tokens committed this round: the accepted draft tokens followed by the bonus token.
    `kind` is "prefill" for the round that reads the prompt (no draft) and "decode" otherwise.
    `state` is what the method's own state did this round (JSON-plain: dicts, lists, str, int, float, bool).
    """

    index: int
    kind: str
    root: int
    root_text: str
    nodes: tuple[Node, ...]
    accepted: tuple[int, ...]  # node indices of the accepted path, root-to-leaf
    tokens: tuple[int, ...]
    text: str
    bonus: int
    bonus_text: str
    bonus_how: str
    target_forwards: int
    draft_forwards: int
    timing: Timing
    kv_len: int
    finished: str = ""  # "eos" or "length" on the last Step of a finished run; "" otherwise (a run stopped by
    # the caller's should_stop ends on a Step with "")
    state: dict = field(default_factory=dict)

    @property
    def n_accepted(self) -> int:
        return len(self.accepted)


EVENT_TYPES: dict[str, type] = {"step": Step}
# event types registered by modules that are imported only when used: a trace that holds them loads them
LAZY_EVENT_MODULES: dict[str, str] = {"sparsity": "labkit.sparsity"}


def register_event(name: str, cls: type) -> None:
    """Let another module (e.g. sparsity) add an event type to traces."""
    EVENT_TYPES[name] = cls


# ---- plain <-> dataclass -------------------------------------------------------------------------

def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def _convert(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return from_plain(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _convert(args[0], value)
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_plain(cls: type, data: dict) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name])
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TraceError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return cls(**kwargs)


def event_to_json(event: Any) -> str:
    for name, cls in EVENT_TYPES.items():
        if type(event) is cls:
            return json.dumps({"type": name, **to_plain(event)}, ensure_ascii=False, allow_nan=True)
    raise TypeError(f"not a trace event: {type(event).__name__}")


def event_from_json(line: str) -> Any:
    data = json.loads(line)
    if not isinstance(data, dict) or "type" not in data:
        raise TraceError("event line has no 'type'")
    name = data.pop("type")
    if name not in EVENT_TYPES and name in LAZY_EVENT_MODULES:
        importlib.import_module(LAZY_EVENT_MODULES[name])
    cls = EVENT_TYPES.get(name)
    if cls is None:
        raise TraceError("unknown event type")
    return from_plain(cls, data)


# ---- files ---------------------------------------------------------------------------------------

class TraceError(ValueError):
    """A trace file that cannot be read: malformed, foreign or from an unknown schema version."""


@dataclass
class Trace:
    config: dict
    events: list
    truncated: bool = False  # the file ended in a partial line (an interrupted run); it was dropped

    @property
    def steps(self) -> list[Step]:
        return [e for e in self.events if isinstance(e, Step)]


class TraceWriter:
    """Write a trace line by line; each line is flushed whole, so a crash leaves a readable file.

    Use as a context manager: `with TraceWriter(path, config) as w: w.write(step)`.
    """

    def __init__(self, path: str | os.PathLike, config: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"schema": SCHEMA, "version": SCHEMA_VERSION, "config": to_plain(config)})
        self._f = open(self.path, "w", encoding="utf-8")
        self._write_line(header)

    def _write_line(self, line: str) -> None:
        if "\n" in line:
            raise ValueError("trace lines cannot contain newlines")
        self._f.write(line + "\n")
        self._f.flush()

    def write(self, event: Any) -> None:
        self._write_line(event_to_json(event))

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_trace(path: str | os.PathLike, config: dict, events: Iterable[Any]) -> None:
    """Write a whole trace atomically (a temporary file of this writer's own, then rename): concurrent writers of
    one path (the app writing a run's trace while a visitor opens it) never move each other's files."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with TraceWriter(tmp, config) as w:
            for e in events:
                w.write(e)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def parse_trace(text: str) -> Trace:
    """Parse trace text; raise TraceError with a one-line reason if it is not a labkit trace."""
    if not text.strip():
        raise TraceError("the file is empty")
    lines = text.split("\n")
    truncated = False
    if lines[-1] == "":
        lines.pop()
    elif len(lines) > 1:
        # the last line has no newline: an interrupted write; drop it unless it parses whole
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
            truncated = True
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise TraceError("the first line is not JSON: not a labkit trace") from None
    if not isinstance(header, dict) or header.get("schema") != SCHEMA:
        raise TraceError("the first line is not a labkit trace header")
    if header.get("version") != SCHEMA_VERSION:
        raise TraceError(f"trace schema version {header.get('version')!r} is not supported "
                         f"(this labkit reads version {SCHEMA_VERSION})")
    events = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            events.append(event_from_json(line))
        except (json.JSONDecodeError, TraceError, TypeError, ValueError) as e:
            raise TraceError(f"line {i} is not a valid event ({e})") from None
    return Trace(config=header.get("config", {}), events=events, truncated=truncated)


def load_trace(path: str | os.PathLike) -> Trace:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TraceError("the file is not UTF-8 text: not a labkit trace") from None
    except OSError as e:
        raise TraceError(f"cannot read {str(path)!r}: {e.strerror or type(e).__name__}") from None
    return parse_trace(text)


# ---- the published schema ------------------------------------------------------------------------

def _schema_of(tp: Any, defs: dict) -> dict:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder: recursive types
            hints = typing.get_type_hints(tp)
            fields = dataclasses.fields(tp)
            defs[tp.__name__] = {
                "type": "object", "description": (tp.__doc__ or "").strip().split("\n\n")[0],
                "properties": {f.name: _schema_of(hints[f.name], defs) for f in fields},
                "required": [f.name for f in fields if f.default is dataclasses.MISSING
                             and f.default_factory is dataclasses.MISSING],
                "additionalProperties": False}
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _schema_of(args[0], defs)}
        return {"type": "array", "prefixItems": [_schema_of(a, defs) for a in args], "items": False}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_of(a, defs) for a in args]}
    simple = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object",
              type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    return {}


def json_schema() -> dict:
    """The JSON Schema (2020-12) of one line of a trace: the header, or an event. Generated from the
    dataclasses themselves, so it cannot drift from them; published as docs/trace.schema.json."""
    for module in LAZY_EVENT_MODULES.values():  # every event type a trace can hold
        importlib.import_module(module)
    defs: dict = {}
    events = []
    for name, cls in EVENT_TYPES.items():
        ref = _schema_of(cls, defs)["$ref"].rsplit("/", 1)[1]
        line = dict(defs[ref])
        line["properties"] = {"type": {"const": name}, **line["properties"]}
        line["required"] = ["type", *line["required"]]
        defs[f"{name}_line"] = line
        events.append({"$ref": f"#/$defs/{name}_line"})
    defs["header"] = {"type": "object", "description": "The first line: schema name, version, the run's config.",
                      "properties": {"schema": {"const": SCHEMA}, "version": {"const": SCHEMA_VERSION},
                                     "config": {"type": "object"}},
                      "required": ["schema", "version"]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"labkit trace line (schema {SCHEMA!r}, version {SCHEMA_VERSION})",
            "description": "A trace is JSON lines: the first line is the header, every other line one event.",
            "oneOf": [{"$ref": "#/$defs/header"}, *events], "$defs": defs}
