"""Method parameters: plain dataclasses whose fields carry help text and bounds.

    @dataclass
    class Params:
        k: int = param(8, "successors stored per token", lo=1, hi=64)

`build(Params, {"k": "4"})` parses strings from the CLI or UI, checks names and bounds, and raises
`ParamError` with one clear line.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Sequence


class ParamError(ValueError):
    pass


def param(default: Any, help: str = "", *, lo: float | None = None, hi: float | None = None,
          choices: Sequence[Any] | None = None, model: bool = False) -> Any:
    """A method parameter. `model=True`: the value names a model to load ('self', 'self:N', a hub id, a path,
    an embedded name): the app checks it against its allow-list before anything is loaded."""
    return dataclasses.field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "choices": choices,
                                                        "model": model})


def parse_self_spec(value: str) -> tuple[str, int | None] | None:
    """The draft specs that name the target's own layers (nothing is loaded): 'self' -> ("self", None),
    'self:N' -> ("first", N), 'self:auto' -> ("first", None), 'self:skip' / 'self:skipK' -> ("skip", None / K).
    None for any other value (a model to load); ParamError for a 'self:' spec that is none of these."""
    v = str(value).strip()
    if v == "self":
        return "self", None
    if not v.startswith("self:"):
        return None
    arg = v[len("self:"):]
    if arg == "auto":
        return "first", None
    if arg.isdigit():
        return "first", int(arg)
    if arg == "skip":
        return "skip", None
    if arg.startswith("skip") and arg[len("skip"):].isdigit():
        return "skip", int(arg[len("skip"):])
    raise ParamError(f"draft={v!r}: expected self, self:N with an integer N, self:auto, self:skip or "
                     "self:skipK")


def is_self_spec(value: str) -> bool:
    """'self', 'self:N', 'self:auto', 'self:skip' or 'self:skipK' (see `parse_self_spec`)."""
    try:
        return parse_self_spec(value) is not None
    except ParamError:
        return False


def describe(cls: type) -> list[dict]:
    """One dict per parameter: name, type, default, help, lo, hi, choices."""
    if cls is None:
        return []
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        out.append({"name": f.name, "type": getattr(hints[f.name], "__name__", str(hints[f.name])),
                    "default": f.default,
                    **{k: f.metadata.get(k) for k in ("help", "lo", "hi", "choices", "model")}})
    return out


def _parse(name: str, tp: Any, value: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ParamError(f"parameter {name} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ParamError(f"parameter {name} must be a number, got {value!r}")
        try:
            v = tp(value) if not isinstance(value, str) else tp(value.strip())
        except (TypeError, ValueError):
            raise ParamError(f"parameter {name} must be {'an integer' if tp is int else 'a number'}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise ParamError(f"parameter {name} must be an integer, got {value!r}")
        return v
    return str(value)


def build(cls: type, overrides: dict[str, Any] | None = None) -> Any:
    if cls is None:
        if overrides:
            raise ParamError(f"this method takes no parameters (got {', '.join(overrides)})")
        return None
    overrides = dict(overrides or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise ParamError(f"unknown parameter {unknown[0]!r}; this method takes: {', '.join(fields) or 'none'}")
    kwargs = {}
    for name, value in overrides.items():
        f = fields[name]
        v = _parse(name, hints[name], value)
        lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
        if lo is not None and v < lo or hi is not None and v > hi:
            raise ParamError(f"parameter {name}={v} is out of range [{lo}, {hi}]")
        if choices is not None and v not in choices:
            raise ParamError(f"parameter {name}={v!r} must be one of {', '.join(map(str, choices))}")
        kwargs[name] = v
    return cls(**kwargs)


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """['k=4', 'nodes=16'] -> {'k': '4', 'nodes': '16'}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ParamError(f"expected name=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'name:param=value:...' (a method or a KV policy with settings, as `labkit bench --methods` and
    `--sparsity` write it) -> (name, params)."""
    parts = [p.strip() for p in spec.strip().split(":")]
    return parts[0], parse_assignments([p for p in parts[1:] if p])
