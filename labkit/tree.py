"""Draft trees as parent arrays; masks, depths, position ids and paths are derived from them.

Conventions (used everywhere in labkit):
- A tree has n drafted nodes, stored in topological order: `parents[i] < i`, and `parents[i] == -1`
  means the node hangs under the root. The root is the round's last committed token, which is not yet
  in the KV cache.
- The verify pass feeds `[root] + nodes`, so verify position 0 is the root and position `i + 1` is node i.
- Depth of the root is 0; its children have depth 1.
- Templates are Medusa/EAGLE-style "choice" lists: each entry is a path of sibling ranks from the root,
  e.g. (0,) is the root's best child and (0, 1) that child's second-best child.
"""
from __future__ import annotations

from typing import Sequence

import torch


def validate(parents: Sequence[int]) -> None:
    for i, p in enumerate(parents):
        if not -1 <= p < i:
            raise ValueError(f"node {i} has parent {p}: parents must precede their children (-1 = root)")


def depths(parents: Sequence[int]) -> list[int]:
    out: list[int] = []
    for p in parents:
        out.append(1 if p < 0 else out[p] + 1)
    return out


def children(parents: Sequence[int]) -> list[list[int]]:
    """children[0] are the root's children; children[i + 1] are node i's (verify-position indexing)."""
    out: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, p in enumerate(parents):
        out[p + 1].append(i)
    return out


def path_to(parents: Sequence[int], i: int) -> list[int]:
    """Node indices from depth 1 down to node i."""
    path = []
    while i >= 0:
        path.append(i)
        i = parents[i]
    return path[::-1]


def leaves(parents: Sequence[int]) -> list[int]:
    has_child = set(p for p in parents if p >= 0)
    return [i for i in range(len(parents)) if i not in has_child]


def paths(parents: Sequence[int]) -> list[list[int]]:
    """Every root-to-leaf path."""
    return [path_to(parents, leaf) for leaf in leaves(parents)]


def is_chain(parents: Sequence[int]) -> bool:
    return all(p == i - 1 for i, p in enumerate(parents))


def ancestor_mask(parents: Sequence[int]) -> torch.Tensor:
    """Bool [n+1, n+1] over verify positions (root first): entry [a, b] is True when b is a or an ancestor of a."""
    n = len(parents)
    m = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    m[:, 0] = True
    for i, p in enumerate(parents):
        row = i + 1
        if p >= 0:
            m[row, : n + 1] = m[p + 1]
        m[row, row] = True
    return m


def position_ids(parents: Sequence[int], start: int) -> list[int]:
    """Positions of the verify inputs: the root sits at `start` (the KV length), a node at start + depth."""
    return [start] + [start + d for d in depths(parents)]


class TreeUnsupported(ValueError):
    """A model that cannot verify a draft tree in one forward (one line: what it is, what works instead)."""


def tree_refusal(model: torch.nn.Module, name: str = "") -> str | None:
    """Why this model cannot verify a draft tree, in one line (None: it can). A model that places tokens by the
    attention mask rather than by position ids (ALiBi: BLOOM, MPT, Falcon with alibi) cannot: a 4D tree mask
    with explicit position ids is how labkit verifies a tree."""
    import inspect

    cfg = model.config
    if "position_ids" in inspect.signature(model.forward).parameters and not getattr(cfg, "alibi", False):
        return None
    return (f"{name or cfg.model_type} ({cfg.model_type}) takes no position ids (ALiBi positions come from the "
            "attention mask), so labkit cannot verify a draft tree on it; chain methods (prompt_lookup, draft_model, "
            "...) and plain decoding work")


def require_tree_masks(model: torch.nn.Module, name: str = "") -> None:
    """Raise `TreeUnsupported` (one line) for a model that cannot verify a draft tree (`tree_refusal`)."""
    reason = tree_refusal(model, name)
    if reason:
        raise TreeUnsupported(reason)


def sliding_window(config) -> int | None:
    """The window of a model whose layer types include sliding-window attention (Gemma-3), else None."""
    types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    return int(window) if window and "sliding_attention" in types else None


def within_window(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """The sliding-window rule, [m, K] bool: a query sees keys less than `window` positions behind it."""
    return (q_pos[:, None] - k_pos[None, :]) < window


def additive_mask(allowed: torch.Tensor, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The additive 4D mask [1, 1, m, K] a Hugging Face model takes, from a bool [m, K] (query may see key): 0
    where allowed, the dtype's minimum elsewhere. labkit's one builder of such masks."""
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None].to(device)


def attention_mask(parents: Sequence[int], past: int, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu", window: int | None = None) -> torch.Tensor:
    """Additive 4D mask [1, 1, n+1, past+n+1]: 0 where a query may attend, the dtype's minimum elsewhere.

    Every query sees the whole committed prefix and its own tree ancestors. With `window`, keys more than
    `window - 1` positions behind the query (by position id) are masked too, as sliding-window layers expect.
    """
    n = len(parents)
    allowed = torch.ones(n + 1, past + n + 1, dtype=torch.bool)
    allowed[:, past:] = ancestor_mask(parents)
    if window is not None:
        q_pos = torch.tensor(position_ids(parents, past))
        allowed &= within_window(q_pos, torch.cat([torch.arange(past), q_pos]), window)
    return additive_mask(allowed, dtype=dtype, device=device)


# ---- static templates ------------------------------------------------------------------------------

def from_choices(choices: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """A choice list -> (parents, ranks): nodes sorted by depth then by path, so the result is BFS-ordered.

    Every prefix of a choice must itself be a choice.
    """
    ordered = sorted({tuple(c) for c in choices if len(c) > 0}, key=lambda c: (len(c), c))
    index = {c: i for i, c in enumerate(ordered)}
    parents, ranks = [], []
    for c in ordered:
        if len(c) > 1 and c[:-1] not in index:
            raise ValueError(f"template path {list(c)} has no parent path {list(c[:-1])}")
        parents.append(index[c[:-1]] if len(c) > 1 else -1)
        ranks.append(c[-1])
    return parents, ranks


def bfs_template(branching: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Build choices from per-depth branching lists: `branching[d][j]` is how many children the j-th node
    of depth d gets (depth 0 is the root, with one entry). Nodes at each depth are taken in rank order.

    Token Recycling's static tree is given this way: a BFS template where the best-ranked nodes expand most.
    """
    level: list[tuple[int, ...]] = [()]
    out: list[tuple[int, ...]] = []
    for counts in branching:
        nxt = []
        for node, k in zip(level, counts):
            for r in range(k):
                nxt.append(node + (r,))
        out.extend(nxt)
        level = nxt
    return out


def chain_choices(length: int) -> list[tuple[int, ...]]:
    return [tuple([0] * d) for d in range(1, length + 1)]


def shrink(choices: Sequence[Sequence[int]], size: int) -> list[tuple[int, ...]]:
    """The first `size` nodes of a template in BFS order (parents always kept before children)."""
    ordered = sorted({tuple(c) for c in choices}, key=lambda c: (len(c), c))
    return ordered[:size]
