"""The registry of KV-selection policies (name -> class), shared by the capture, the session, the bench and
the tests. Register a policy by adding its class to `_POLICIES`."""
from __future__ import annotations

from typing import Any

from ...params import ParamError, build, describe
from .base import Policy
from .dense import Dense
from .h2o import A2SF, H2O
from .razor import RazorAttention
from .streaming import StreamingLLM
from .tidal import TidalDecode
from .token_select import TokenSelect

_POLICIES: list[type[Policy]] = [Dense, StreamingLLM, H2O, A2SF, TidalDecode, TokenSelect, RazorAttention]

REGISTRY: dict[str, type[Policy]] = {cls.name: cls for cls in _POLICIES}


def get(name: str) -> type[Policy]:
    if name not in REGISTRY:
        raise ParamError(f"unknown sparsity policy {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def create(name: str, params: dict[str, Any] | None = None) -> Policy:
    cls = get(name)
    return cls(build(cls.Params, params))


def info(name: str) -> dict:
    cls = get(name)
    return {"name": cls.name, "title": cls.title, "paper": cls.paper, "granularity": cls.granularity,
            "params": describe(cls.Params)}


__all__ = ["REGISTRY", "Policy", "get", "create", "info"]
