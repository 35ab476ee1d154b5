"""A draft LM that expands draft *trees*: the shared engine of DySpec, RSD, SpecTr, static-template trees,
adaptive-length chains and LANTERN.

`TreeDrafter` wraps any `LM` that shares the target's tokenizer (offline default: the target's own first
layers, `truncated_copy`). It keeps its own KV cache for the committed prefix:

    root_logits = d.begin(seq)              # sync the cache with the committed tokens (root last)
    logits = d.expand(parents, tokens, [0, 1, 2])   # score tree nodes in ONE forward (4D tree mask)
    logits = d.expand(parents, tokens, [3, 4])      # ...level by level; ancestors must already be fed
    d.end()                                  # drop the tree entries again

`begin` rolls the cache back to the longest prefix it shares with the committed sequence (as
`draft_model.py` does), so accepted tokens are re-read once and rejected branches never linger. Tree nodes
are appended to the cache in the order they are fed; a node attends to the committed prefix and to its own
ancestors only, at position `len(seq) - 1 + depth`. Sliding-window models get per-layer-type masks.

Also here: `resolve_draft` (the `draft=` parameter: 'self:skip', 'self:N', 'self', or a model name), `draw_children`
(a node's children: top-m when greedy, m draws without replacement otherwise) and `DrafterMethod`, the base
class of the methods that draft with a `TreeDrafter`.
"""
from __future__ import annotations

import copy
import re
from typing import Sequence

import torch

from . import backends
from .sampling import probs
from . import tree
from .engine import Method
from .models import LM, cache_kwargs, load, load_tokenizer
from .params import ParamError, param, parse_self_spec


DRAFT_HELP = ("'self:skip' (default) = the target without its middle tenth of layers (on SmolLM2: 27 of 30 layers; it "
              "accepts about a third of the drafted tokens at temperature 0.8, but each draft token costs ~0.9 of a "
              "target forward: it shows trees and acceptance rules, not speed); 'self:skipK' = without K middle "
              "layers; 'self:N' = the target's first N layers ('self:auto' = a fifth: cheap, but on SmolLM2 it "
              "accepts ~1%); 'self' = the target itself; or a hub id / local path / embedded model name with the "
              "same tokenizer (a real small draft model is what makes these methods fast)")
DEFAULT_DRAFT = "self:skip"


def draft_param(what: str = "the draft LM"):
    """The `draft` parameter of every method that drafts with a model (one definition, one default)."""
    return param(DEFAULT_DRAFT, f"{what}: {DRAFT_HELP}", model=True)


def layer_copy(lm: LM, keep: list[int], name: str) -> LM:
    """A model of the target's class made of the target's decoder layers `keep` (in order), sharing their
    weights, the embeddings, the final norm and the head; on the target's execution path."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(lm.config)
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    model = AutoModelForCausalLM.from_config(cfg, dtype=lm.dtype)
    own = model.state_dict()
    shared = {}
    for key, value in lm.model.state_dict().items():
        m = re.match(r"(.*\.layers\.)(\d+)(\..*)", key)
        if m:
            if int(m.group(2)) not in keep:
                continue
            key = f"{m.group(1)}{keep.index(int(m.group(2)))}{m.group(3)}"
        if key in own:
            shared[key] = value
    model.load_state_dict(shared, strict=False, assign=True)
    model.tie_weights()
    model.to(lm.device).eval()
    backends.apply(model, lm.backend)  # the draft runs on the target's execution path
    return LM(model=model, tokenizer=lm.tokenizer, name=f"{lm.name} ({name})", source="layers of the target")


def truncated_copy(lm: LM, n_layers: int) -> LM:
    """The target's first `n_layers` decoder layers (plus its embeddings, final norm and head)."""
    total = lm.config.num_hidden_layers
    if not 1 <= n_layers <= total:
        raise ParamError(f"self:N needs 1 <= N <= {total} (the target has {total} layers)")
    return layer_copy(lm, list(range(n_layers)), f"first {n_layers}/{total} layers")


def skip_copy(lm: LM, n_skip: int | None = None) -> LM:
    """The target without `n_skip` consecutive middle layers (default: a tenth of them, at least one)."""
    total = lm.config.num_hidden_layers
    k = max(1, round(total / 10)) if n_skip is None else n_skip
    if not 1 <= k < total:
        raise ParamError(f"self:skipK needs 1 <= K < {total} (the target has {total} layers)")
    start = total // 2 - k // 2
    keep = [i for i in range(total) if not start <= i < start + k]
    return layer_copy(lm, keep, f"without layers {start}-{start + k - 1}: {len(keep)}/{total} layers")


def resolve_draft(lm: LM, spec: str) -> LM:
    """The draft LM named by `spec` (see DRAFT_HELP): 'self:skip' / 'self:skipK' = the target without its middle
    layers, 'self:N' = its first N layers ('self:auto' = a fifth of them, at least one), 'self' = the target
    itself, else a hub id / local path / embedded model name."""
    own = parse_self_spec(spec)
    if own is None:
        # the vocabulary first (seconds), the weights only if it matches (a conversion can take minutes)
        _check_vocab(lm, load_tokenizer(spec), spec)
        return load(spec, dtype=lm.dtype, device=str(lm.device), backend=lm.backend)
    if own[0] == "self":
        return lm
    if own[0] == "skip":
        return skip_copy(lm, own[1])  # the target's own layers share its tokenizer
    return truncated_copy(lm, own[1] if own[1] is not None else max(1, round(lm.config.num_hidden_layers / 5)))


def _check_vocab(lm: LM, tokenizer, spec: str) -> None:
    """Token ids must mean the same on both sides: the draft's vocabulary must equal the target's."""
    if tokenizer.get_vocab() != lm.tokenizer.get_vocab():
        raise ParamError(f"draft model {spec!r} does not share the target's tokenizer")


def same_tokenizer(lm: LM, draft: LM, spec: str) -> LM:
    """`draft`, if it shares the target's vocabulary."""
    _check_vocab(lm, draft.tokenizer, spec)
    return draft


def slot_mask(allowed: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, *, dtype: torch.dtype,
              device, window: int | None):
    """Additive 4D mask [1, 1, m, K] from a bool `allowed` [m, K] (query may see key), plus a per-layer-type
    dict when the model has sliding-window layers (keys `window` or more positions back are hidden there)."""
    full = tree.additive_mask(allowed, dtype=dtype, device=device)
    if window is None:
        return full
    near = tree.within_window(q_pos, k_pos, window)
    return {"full_attention": full, "sliding_attention": tree.additive_mask(allowed & near, dtype=dtype, device=device)}


class TreeDrafter:
    """A draft LM with its own KV cache that scores batches of tree nodes (see the module docstring)."""

    def __init__(self, lm: LM):
        self.lm = lm
        if getattr(lm, "model", None) is not None:  # every expand passes a 4D mask (toy drafters have no model)
            tree.require_tree_masks(lm.model, lm.name)
        self.window = tree.sliding_window(lm.config)
        self.reset()

    def reset(self) -> None:
        from .backends import new_cache

        self.cache = new_cache(getattr(self.lm, "model", None))
        self.fed: list[int] = []  # committed tokens in the cache
        self.slots: dict[int, int] = {}  # tree node index -> its order among the fed tree entries
        self.slot_pos: list[int] = []  # position id of each fed tree entry
        self.forwards = 0  # forward passes since the last `begin`

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def _forward(self, ids: list[int], positions: list[int], mask) -> torch.Tensor:
        dev = self.lm.device
        kwargs = dict(input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([positions], device=dev),
                      **cache_kwargs(self.lm.model, self.cache), use_cache=True)
        if mask is not None:
            kwargs["attention_mask"] = mask
        out = self.lm.model(**kwargs)
        self.forwards += 1
        return out.logits[0]

    @torch.inference_mode()
    def begin(self, seq: Sequence[int]) -> torch.Tensor:
        """Sync the cache with the committed tokens `seq` (root last); return the logits [V] at the root."""
        self.end()
        self.forwards = 0
        common = 0
        for a, b in zip(self.fed, seq):
            if a != b:
                break
            common += 1
        common = min(common, len(seq) - 1)  # always re-read the root to get its logits
        if common < len(self.fed):
            self.cache.crop(common - len(self.fed))
            del self.fed[common:]
        new = list(seq[common:])
        logits = self._forward(new, list(range(common, common + len(new))), None)
        self.fed.extend(new)
        return logits[-1]

    @torch.inference_mode()
    def expand(self, parents: Sequence[int], tokens: Sequence[int], nodes: Sequence[int]) -> torch.Tensor:
        """Feed tree nodes `nodes` (indices into the parent array) in one forward; return their logits [m, V].
        Every ancestor of a fed node must have been fed before or in the same call (earlier in `nodes`)."""
        if not nodes:
            return torch.empty(0, device=self.device)
        past = len(self.fed)
        depth: dict[int, int] = {}

        def depth_of(i: int) -> int:
            if i not in depth:
                depth[i] = 1 if parents[i] < 0 else depth_of(parents[i]) + 1
            return depth[i]

        n_old = len(self.slot_pos)
        new_slot = {i: n_old + j for j, i in enumerate(nodes)}
        total = past + n_old + len(nodes)
        allowed = torch.zeros(len(nodes), total, dtype=torch.bool)
        allowed[:, :past] = True
        q_pos = []
        for r, i in enumerate(nodes):
            a = i
            while a >= 0:
                slot = new_slot.get(a, self.slots.get(a))
                if slot is None:
                    raise ValueError(f"tree node {a} (an ancestor of node {i}) has not been fed to the drafter")
                if a in new_slot and new_slot[a] > new_slot[i]:
                    raise ValueError(f"tree node {a} must be fed before its descendant {i}")
                allowed[r, past + slot] = True
                a = parents[a]
            q_pos.append(past - 1 + depth_of(i))
        k_pos = torch.tensor(list(range(past)) + self.slot_pos + q_pos)
        mask = slot_mask(allowed, torch.tensor(q_pos), k_pos, dtype=self.lm.dtype, device=self.device,
                         window=self.window)
        logits = self._forward([int(tokens[i]) for i in nodes], q_pos, mask)
        self.slots.update(new_slot)
        self.slot_pos.extend(q_pos)
        return logits

    def end(self) -> None:
        """Drop the tree entries from the cache (the committed prefix stays)."""
        if self.slot_pos:
            self.cache.crop(-len(self.slot_pos))
        self.slots = {}
        self.slot_pos = []

    def describe(self) -> str:
        return self.lm.name


def draw_children(q: torch.Tensor, m: int, greedy: bool, generator: torch.Generator) -> list[int]:
    """The first m children to draft from distribution q, in order: its top-m tokens when greedy; otherwise m
    draws WITHOUT replacement (Gumbel-top-k: the top m of log q + Gumbel noise), in draw order. Tokens with
    q = 0 never appear, so fewer than m may come back."""
    m = min(m, int((q > 0).sum()))
    if m <= 0:
        return []
    if greedy:
        return torch.topk(q, m).indices.tolist()
    u = torch.rand(q.shape, generator=generator, device=q.device).clamp_(1e-20, 1.0 - 1e-7)
    keys = torch.log(q) - torch.log(-torch.log(u))
    return torch.topk(keys, m).indices.tolist()


class DrafterMethod(Method):
    """Base of the methods that draft with a `TreeDrafter` (their Params have a `draft` spec)."""

    def __init__(self, lm: LM, params=None, draft_lm: LM | None = None):
        super().__init__(lm, params)
        self.drafter = TreeDrafter(draft_lm if draft_lm is not None else resolve_draft(lm, self.params.draft))

    def start(self, prompt, sampling) -> None:
        self.drafter.reset()

    def dist(self, logits: torch.Tensor, sampling) -> torch.Tensor:
        """The draft distribution q, transformed exactly as the target's p (float32, on the target's device)."""
        return probs(logits, sampling).to(self.lm.device)

    def draft_note(self) -> str:
        d = self.drafter.lm
        weak = " (a weak self-draft: no separate draft model offline)" if d.source.startswith("layer") else ""
        return f"draft {d.name}{weak}"
