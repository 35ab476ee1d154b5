"""Static draft-tree templates, as data.

A template is a Medusa/EAGLE-style choice list: each entry is a path of sibling *ranks* from the root, e.g.
(0,) is the root's best child and (0, 1) that child's second-best child (see `labkit.tree`). A method applies
a template to a draft distribution: a node at path (r1, ..., rd) gets the rank-rd token of the draft's
distribution at its parent (`methods/static_tree.py`).

- `MC_SIM_7B_63`: the 63-node tree of Medusa (Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration
  Framework with Multiple Decoding Heads", ICML, arXiv:2401.10774; `medusa_choices.py`), which EAGLE-1 (Li et
  al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty", ICML, arXiv:2401.15077)
  uses as its default tree. Listed in the order Medusa built it greedily (most valuable node first), so any
  prefix of the list is itself a tree.
- `ZEPHYR_STAGE2`: Medusa's 63-node tree tuned for Zephyr-7B (same source), also in construction order.
- Token Recycling's 80-node BFS template (Luo et al. 2024, arXiv:2408.08696) lives in
  `methods/token_recycling.py` as `PAPER_TREE`; `token_recycling()` below reads it from there.
- `top_k_tree(k, depth)`: the full k-ary tree; `chain(n)`: a single path.
"""
from __future__ import annotations

from typing import Sequence

from . import tree

Choices = list[tuple[int, ...]]

MC_SIM_7B_63: Choices = [
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,), (0, 4), (2, 0), (0, 5),
    (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1), (7,), (0, 8), (0, 0, 2), (3, 0), (0, 9), (8,), (9,),
    (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3), (4, 0), (2, 1), (0, 0, 4), (0, 0, 5), (0, 0, 0, 0), (0, 1, 1),
    (0, 0, 6), (0, 3, 0), (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9), (6, 0), (0, 4, 0), (1, 4), (7, 0),
    (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5), (1, 0, 1), (0, 2, 1), (9, 0), (0, 6, 0),
    (0, 0, 0, 1), (1, 6), (0, 7, 0),
]

ZEPHYR_STAGE2: Choices = [
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,), (2, 0), (0, 0, 1), (0, 4),
    (5,), (0, 5), (0, 1, 0), (1, 1), (6,), (0, 0, 2), (3, 0), (0, 6), (7,), (0, 7), (0, 8), (0, 0, 3), (1, 0, 0),
    (0, 9), (0, 2, 0), (1, 2), (4, 0), (8,), (9,), (2, 1), (0, 1, 1), (0, 0, 4), (0, 0, 0, 0), (5, 0), (0, 3, 0),
    (1, 3), (0, 0, 5), (0, 0, 6), (6, 0), (2, 0, 0), (1, 0, 1), (0, 1, 2), (0, 4, 0), (1, 4), (3, 1), (2, 2),
    (0, 0, 7), (7, 0), (0, 2, 1), (0, 0, 8), (0, 1, 3), (0, 5, 0), (1, 5), (0, 0, 9), (1, 1, 0), (0, 0, 0, 1),
    (0, 0, 1, 0), (4, 1), (2, 3),
]


# The paper's default tree ("2.2.2"): number of children of each template node, keyed by its path of
# sibling ranks from the root. 8 + 21 + 25 + 15 + 8 + 3 = 80 nodes, depth 6.
PAPER_TREE: dict[tuple[int, ...], int] = {
    (): 8,
    (0,): 8, (1,): 4, (2,): 3, (3,): 2, (4,): 1, (5,): 1, (6,): 1, (7,): 1,
    (0, 0): 8, (0, 1): 3, (0, 2): 2, (0, 3): 1, (0, 4): 1, (0, 5): 1, (0, 6): 1, (0, 7): 1,
    (1, 0): 2, (1, 1): 1, (2, 0): 1, (3, 0): 1, (4, 0): 1, (5, 0): 1,
    (0, 0, 0): 5, (0, 0, 1): 2, (0, 0, 2): 1, (0, 0, 3): 1, (0, 0, 4): 1, (0, 1, 0): 1, (0, 2, 0): 1,
    (1, 0, 0): 1, (2, 0, 0): 1, (3, 0, 0): 1,
    (0, 0, 0, 0): 3, (0, 0, 0, 1): 1, (0, 0, 0, 2): 1, (0, 0, 1, 0): 1, (0, 1, 0, 0): 1, (1, 0, 0, 0): 1,
    (0, 0, 0, 0, 0): 2, (0, 0, 0, 1, 0): 1,
}

# Prior probability that the rank-r successor in M is the target's next token (used only to order the
# template when it is cut to fewer nodes: a path's score is the product over its ranks). labkit's numbers, not
# the paper's: the paper always drafts its whole fixed template and needs no order.
RANK_PRIOR = (0.45, 0.12, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01)


def paper_choices() -> list[tuple[int, ...]]:
    out = []
    for parent, n in PAPER_TREE.items():
        out.extend(parent + (r,) for r in range(n))
    return out


def path_score(path: tuple[int, ...], prior=RANK_PRIOR) -> float:
    s = 1.0
    for r in path:
        s *= prior[r] if r < len(prior) else prior[-1]
    return s


def best_subtree(choices, size: int, prior=RANK_PRIOR) -> list[tuple[int, ...]]:
    """The `size` template paths with the highest score. A child never outscores its parent, so the result is
    a tree. (Sorted in BFS order afterwards.)"""
    ranked = sorted(choices, key=lambda c: (-path_score(c, prior), len(c), c))[:size]
    return sorted(ranked, key=lambda c: (len(c), c))


def token_recycling() -> Choices:
    """Token Recycling's 80-node template, ordered by its prior path score (so prefixes are trees)."""
    return sorted(paper_choices(), key=lambda c: (-path_score(c), len(c), c))


def top_k_tree(k: int, depth: int) -> Choices:
    """Every path of ranks < k up to `depth` (k + k^2 + ... nodes), BFS order."""
    return tree.bfs_template([[k] * (k ** d) for d in range(depth)])


def chain(n: int) -> Choices:
    return tree.chain_choices(n)


def first(choices: Sequence[Sequence[int]], size: int) -> Choices:
    """The first `size` entries of a template given in construction order (raises if that is not a tree)."""
    out = [tuple(c) for c in choices[:size]]
    have = set(out)
    for c in out:
        if len(c) > 1 and c[:-1] not in have:
            raise ValueError(f"the first {size} template entries are not a tree: {list(c)} lacks its parent")
    return out


TEMPLATES = {
    "mc_sim_7b_63": lambda: list(MC_SIM_7B_63),
    "zephyr_stage2": lambda: list(ZEPHYR_STAGE2),
    "token_recycling": token_recycling,
    "top3_depth3": lambda: top_k_tree(3, 3),
    "chain8": lambda: chain(8),
}


def get(name: str, size: int | None = None) -> Choices:
    """A named template, cut to its first `size` nodes (construction order)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; available: {', '.join(TEMPLATES)}")
    choices = TEMPLATES[name]()
    return first(choices, size if size is not None else len(choices))
