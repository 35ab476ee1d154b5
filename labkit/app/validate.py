"""Every input a visitor can send, checked in one clear line each (ParamError / ValueError)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

from .. import methods
from ..params import ParamError, build, describe, is_self_spec
from ..session import sampling_config
from .config import AppConfig, MODES, ModelPool



# ---- validation: every input, one clear line each ---------------------------------------------------------

def parse_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty: give a whole number")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    v = int(f)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        if hi is None:
            raise ValueError(f"{name}={v} is too small: it must be at least {lo}")
        if lo is None:
            raise ValueError(f"{name}={v} is too large: it must be at most {hi}")
        raise ValueError(f"{name}={v} is out of range [{lo}, {hi}]")
    return v


def parse_float(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty: give a number")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        raise ValueError(f"{name}={v:g} is out of range {'(' if lo_open else '['}{lo:g}, {hi:g}]")
    return v


def parse_prompt(prompt: Any, cfg: AppConfig) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type something for the model to continue")
    if len(prompt) > cfg.max_prompt_chars:
        raise ValueError(f"the prompt has {len(prompt)} characters; this app accepts at most {cfg.max_prompt_chars}")
    return prompt


def parse_sampling(mode: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any):
    mode = str(mode or "").strip().lower()
    if mode not in MODES:
        raise ValueError(f"decoding must be one of {', '.join(MODES)}, got {mode!r}")
    seed = parse_int("seed", 0 if seed is None else seed, 0, 2**31 - 1)
    if mode == "greedy":
        return sampling_config(seed=seed)
    return sampling_config(temperature=parse_float("temperature", temperature, 0.0, 2.0, lo_open=True),
                           top_k=parse_int("top_k", top_k, 0, 100_000),
                           top_p=parse_float("top_p", top_p, 0.0, 1.0, lo_open=True), seed=seed)


def method_names() -> list[str]:
    return list(methods.REGISTRY)


def method_label(name: str) -> str:
    """What the pickers show: name, title, and whether the method is lossless (and its kind if not speculative)."""
    info = methods.info(name)
    tags = ["lossless" if info["lossless"] else "LOSSY"]
    if info["kind"] != "speculative":
        tags.append(info["kind"])
    return f"{name} · {info['title']} [{', '.join(tags)}]"


def method_card(name: str) -> str:
    """Markdown describing a method: title, paper, lossless or lossy, kind, parameters."""
    try:
        info = methods.info(name)
    except ParamError as e:
        return f"⚠ {e}"
    tag = "lossless (token-identical to greedy `generate`; preserves the sampling distribution)" if info["lossless"] \
        else "**LOSSY**: trades exactness for speed, its output can differ from the target's"
    lines = [f"**{info['title']}** (`{name}`), {info['kind']}; {tag}.", "", f"Paper: {info['paper']}"]
    if info["kind"] == "speculative":
        lines += ["", f"Where it shines: _{info['example']}_"]
    for p in info["params"]:
        if p.get("model"):  # what the draft is and what it costs
            lines += ["", f"`{p['name']}` (default `{p['default']}`): {p['help']}"]
    if not info["params"]:
        lines += ["", "No parameters."]
    return "\n".join(lines)


def parse_params(name: str, raw: dict | None, pool: ModelPool) -> dict:
    """Validate a method's parameters from the form (strings or numbers); return the non-default values typed.

    Parameters that name a model (declared with `param(..., model=True)`, e.g. draft_model's `draft`) must be
    'self' / 'self:N' or on the allow-list: the public demo loads nothing else (a bare hub id like `gpt2` too)."""
    cls = methods.get(name)
    raw = {k: v for k, v in (raw or {}).items()}
    if cls.Params is None:
        if any(v not in (None, "") for v in raw.values()):
            raise ParamError(f"{name} takes no parameters")
        return {}
    types = {d["name"]: d["type"] for d in describe(cls.Params)}
    for k, v in raw.items():
        if v is None or (isinstance(v, str) and not v.strip() and types.get(k) not in (None, "str")):
            raise ParamError(f"parameter {k} of {name} is empty")
    p = build(cls.Params, raw)
    out = {}
    for f in dataclasses.fields(p):
        v = getattr(p, f.name)
        if f.metadata.get("model") and not is_self_spec(v) and v not in pool.allowed:
            raise ParamError(f"parameter {f.name}={v!r} names a model that is not on this app's allow-list "
                             f"({', '.join(pool.allowed)})")
        if v != f.default:
            out[f.name] = v
    return out


@dataclass(frozen=True)
class Request:
    model: str
    method: str
    prompt: str
    max_new_tokens: int
    sampling: Any
    params: dict
    chat: bool

def collect_params(values: Sequence[Any], layout: Sequence[tuple[str, str]]) -> dict[str, dict]:
    """Flat form values (as app.py passes them) -> {method: {param: value}}, using the (method, param) layout."""
    out: dict[str, dict] = {}
    for (m, p), v in zip(layout, values):
        out.setdefault(m, {})[p] = v
    return out


def param_layout() -> list[tuple[str, dict]]:
    """(method, param description) for every parameter of every registered method, in registry order."""
    return [(name, p) for name in methods.REGISTRY for p in describe(methods.REGISTRY[name].Params)]


def policy_param_layout() -> list[tuple[str, dict]]:
    """(policy, param description) for every parameter of every registered KV policy but its budget (the
    Sparsity tab's own slider), in registry order."""
    from ..sparsity import policies

    return [(name, p) for name, cls in policies.REGISTRY.items() for p in describe(cls.Params)
            if p["name"] != "budget"]
