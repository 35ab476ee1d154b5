"""Token Recycling: draft from the candidate tokens the target already produced and threw away.

Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large Language Models with Token
Recycling", ACL 2025, arXiv:2408.08696. Lossless (training-free tree drafts, verified by the target).

- An adjacency matrix M[V, k] stores, for every token, the top-k tokens the target predicted after it
  the last time that token was verified. Unknown rows are -1 (those branches are not drafted).
- Each round, a draft tree is read off M breadth-first along a static template: a node at template path
  (r1, ..., rd) gets token M[parent_token, rd]. The paper's default template has 80 nodes in 6 levels with
  k = 8; `nodes` keeps only the template paths with the highest prior acceptance (a 135M model on a CPU
  pays for every extra node).
- After verification, every verified position (the root and all nodes) refreshes its row with the top-k
  of its target logits. The matrix persists across prompts of a session until `reset()`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import tree as T
from ..engine import Method, Proposal, Verified
from ..params import param

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
# template when it is cut to fewer nodes: a path's score is the product over its ranks).
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


@dataclass
class TokenRecyclingParams:
    k: int = param(8, "successor candidates stored per token (matrix columns)", lo=1, hi=32)
    nodes: int = param(24, "draft-tree size: the best `nodes` paths of the paper's 80-node template", lo=1, hi=80)


class TokenRecycling(Method):
    name = "token_recycling"
    title = "Token Recycling"
    paper = "Luo et al. 2024, Turning Trash into Treasure: Token Recycling (arXiv:2408.08696, ACL 2025)"
    lossless = True
    Params = TokenRecyclingParams

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        vocab = lm.model.get_output_embeddings().weight.shape[0]
        self.matrix = torch.full((vocab, self.params.k), -1, dtype=torch.long, device=lm.device)
        self.set_template(best_subtree([c for c in paper_choices() if max(c) < self.params.k], self.params.nodes))

    def set_template(self, choices) -> None:
        parents, ranks = T.from_choices(choices)
        self.choices = [tuple(c) for c in sorted(choices, key=lambda c: (len(c), c))]
        self.t_parents = parents
        self.t_ranks = torch.tensor(ranks, dtype=torch.long, device=self.matrix.device)
        self.t_parent_idx = torch.tensor(parents, dtype=torch.long, device=self.matrix.device)

    def reset(self) -> None:
        self.matrix.fill_(-1)

    def propose(self, seq, sampling, generator) -> Proposal:
        n = len(self.t_parents)
        if n == 0:
            return Proposal()
        # level by level, a node's token is M[parent token, rank]; -1 marks an unknown row
        tokens = torch.full((n,), -1, dtype=torch.long, device=self.matrix.device)
        depth = T.depths(self.t_parents)
        root = torch.tensor(seq[-1], device=self.matrix.device)
        for d in range(1, max(depth) + 1):
            idx = [i for i in range(n) if depth[i] == d]
            sel = torch.tensor(idx, device=self.matrix.device)
            par = self.t_parent_idx[sel]
            par_tok = torch.where(par < 0, root, tokens[par.clamp(min=0)])
            tok = self.matrix[par_tok.clamp(min=0), self.t_ranks[sel]]
            tokens[sel] = torch.where(par_tok < 0, -1, tok)
        tok_list = tokens.tolist()
        keep = [i for i in range(n) if tok_list[i] >= 0]  # unknown parents are -1 too, so subtrees drop out
        new_index = {old: new for new, old in enumerate(keep)}
        parents = [new_index.get(self.t_parents[i], -1) if self.t_parents[i] >= 0 else -1 for i in keep]
        used = sorted({seq[-1]} | {tok_list[p] for p in self.t_parents if p >= 0 and tok_list[p] >= 0})
        return Proposal(tokens=[tok_list[i] for i in keep], parents=parents,
                        state={"template_nodes": n, "drafted": len(keep),
                               "rows_read": {str(t): self.matrix[t].tolist() for t in used}})

    @torch.inference_mode()
    def observe(self, v: Verified) -> dict:
        inputs = torch.tensor([v.seq[-1]] + list(v.proposal.tokens), device=self.matrix.device)
        top = torch.topk(v.logits, self.params.k, dim=-1).indices.to(self.matrix.device)
        before = self.matrix[inputs]
        self.matrix[inputs] = top
        changed = int((before != top).any(dim=-1).sum())
        return {"rows_updated": int(inputs.numel()), "rows_changed": changed,
                "matrix_rows_known": int((self.matrix[:, 0] >= 0).sum())}

    def describe(self) -> str:
        return f"Token Recycling (k={self.params.k}, {len(self.t_parents)}-node tree from the paper's 80-node template)"
