"""The one registry of decoding methods, shared by the CLI, the app, the benchmark and the tests.

Register a method by adding its class to `_METHODS`; the registry-parametrized tests pick it up at once.
"""
from __future__ import annotations

from typing import Any

from ..engine import Method
from ..params import ParamError, build, describe, split_spec
from .autoregressive import Autoregressive
from .draft_model import DraftModel
from .prompt_lookup import PromptLookup
from .token_recycling import TokenRecycling
# draft trees, acceptance rules and strategies (issue 3)
from .adaptive_length import AdaptiveLength
from .contrastive import ContrastiveSearch
from .diverse_beam import DiverseBeamSearch
from .dyspec import DySpec
from .ead import EntropyAdaptive
from .lantern import Lantern
from .rsd import RSDBeam, RSDConstant
from .spectr import SpecTr
from .static_tree import StaticTree
from .strategies import Greedy, MinPSampling, TemperatureSampling, TopKSampling, TopPSampling, TypicalSampling
from .typical import TypicalAcceptance
# training-free draft sources (issue 3)
from .aded import Aded
from .copy_spec import CopySpec
from .early_exit import EarlyExit
from .lookahead import Lookahead
from .swift import Swift
from .suffix import SuffixDecoding
from .sparse_self_spec import SparseSelfSpec

_METHODS: list[type[Method]] = [Autoregressive, PromptLookup, TokenRecycling, DraftModel]
_METHODS += [StaticTree, DySpec, RSDConstant, RSDBeam, SpecTr, AdaptiveLength,  # lossless draft trees
             TypicalAcceptance, Lantern,  # lossy acceptance rules
             Greedy, TemperatureSampling, TopKSampling, TopPSampling, MinPSampling, TypicalSampling,  # strategies
             ContrastiveSearch, DiverseBeamSearch, EntropyAdaptive]
_METHODS += [Aded, Lookahead, CopySpec, Swift, EarlyExit]  # training-free draft sources
_METHODS += [SuffixDecoding, SparseSelfSpec]  # the two that join the lab's halves (issue 14)

REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in _METHODS}


def get(name: str) -> type[Method]:
    """The class of a method name (or of a spec 'name:param=value...')."""
    name = split_spec(name)[0] if ":" in name else name
    if name not in REGISTRY:
        raise ParamError(f"unknown method {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def create(name: str, lm, params: dict[str, Any] | None = None) -> Method:
    """An instance of a method name or spec; `params` override the spec's."""
    base, spec_params = split_spec(name)
    cls = get(base)
    return cls(lm, build(cls.Params, {**spec_params, **(params or {})}))


def spec_of(name: str, overrides: dict[str, Any]) -> str:
    return name + "".join(f":{k}={v}" for k, v in overrides.items())


def variants(*, lossless: bool | None = None) -> list[str]:
    """Every method and each of its named variants (`Method.variants`) as a spec, registry order: what the
    registry-parametrized tests run, so a new variant is tested the moment it is declared."""
    out = []
    for name, cls in REGISTRY.items():
        if lossless is None or cls.lossless == lossless:
            out += [name] + [spec_of(name, v) for v in cls.variants]
    return out


def own_tokens_only(name: str | None) -> bool:
    """The one provenance rule: a method that commits only the target's own choices, with no draft (the
    baseline and the decoding strategies), shows its tokens as autoregressive; a speculative method's tokens are
    accepted drafts or bonus tokens. Unknown names (e.g. a label) count as speculative."""
    cls = REGISTRY.get(name or "")
    return cls is not None and cls.kind != "speculative"


def info(name: str) -> dict:
    cls = get(name)
    return {"name": cls.name, "title": cls.title, "paper": cls.paper, "lossless": cls.lossless,
            "kind": cls.kind, "params": describe(cls.Params), "example": cls.example,
            "variants": [spec_of(cls.name, v) for v in cls.variants]}


__all__ = ["REGISTRY", "get", "create", "info", "own_tokens_only", "Method", "split_spec", "spec_of", "variants"]
