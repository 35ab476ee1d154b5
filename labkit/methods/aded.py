"""ADED: an adaptive tri-gram model of the target's own outputs, and an MCTS-style draft tree over it.

Liu, Lei, Zhang and Xu, "Adaptive Draft-Verification for Efficient Large Language Model Decoding" (AAAI 2025,
arXiv:2407.12021). Lossless: the tree is verified by the target; the drafts are deterministic (point masses),
so the default rule keeps sampling exact.

- The tri-gram matrix M[(a, b)] -> weights over next tokens c approximates the target's next-token distribution
  given the last two tokens. After every round, each verified position (the root and every drafted node, in its
  tree context) decays its row by `decay` and adds the target's top-`k_update` probabilities, so the rows follow
  what the model is saying now. A bigram row M[b] is kept the same way and used where a tri-gram row is unknown.
  The prompt's own tri-grams seed the matrix (`seed_prompt`); the paper seeds it from a corpus.
- The draft tree is built by simulations, as in MCTS with a PUCT rule: each simulation walks down from the root,
  at every node picking the next token a (among the `branch` most probable in the matrix row of its context s)
  that maximises

      Q(s, a) + c_puct * P(s, a) * sqrt(N(s) + 1) / (1 + N(s, a))

  where P is the matrix probability (exploitation), Q is the acceptance rate this transition achieved when it
  was drafted before (shrunk towards P with `prior` pseudo-counts), and N counts how often (s, a) was drafted in
  earlier rounds plus how often this round's simulations already went through it (exploration: less-visited
  branches get a bonus). A simulation that reaches a token not yet in the tree adds it; `nodes` simulations
  that add a node build the tree (a subtree that cannot grow any more is skipped). Simplification: the paper's draft maker also rolls out further; here Q comes
  from observed acceptance instead of rollouts.

Trace: `rows` (the matrix rows the tree read, top entries), `branches` (per node: P, Q, exploration bonus U),
and after verification how many rows changed and the acceptance of the chosen transitions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import tree
from ..engine import Method, Proposal, Verified
from ..params import param

Context = tuple[int, int]


@dataclass
class AdedParams:
    nodes: int = param(10, "draft-tree size (simulations that add a node); a GPU verifies 64+ at once", lo=1, hi=128)
    depth: int = param(5, "deepest draft node", lo=1, hi=16)
    branch: int = param(4, "candidates per node: the most probable tokens of the matrix row", lo=1, hi=16)
    k_update: int = param(8, "target top-k probabilities written into a row per verified position", lo=1, hi=64)
    decay: float = param(0.6, "row decay per update (lower adapts faster)", lo=0.0, hi=1.0)
    row_size: int = param(16, "entries kept per matrix row", lo=1, hi=256)
    c_puct: float = param(1.0, "exploration weight in the PUCT score", lo=0.0, hi=10.0)
    prior: float = param(2.0, "pseudo-counts that shrink the observed acceptance Q towards P", lo=0.0, hi=100.0)
    seed_prompt: bool = param(True, "add the prompt's tri-grams to the matrix at the start of a generation")


class TrigramMatrix:
    """Sparse tri-gram (and bigram fallback) rows of decayed next-token weights."""

    def __init__(self, decay: float, row_size: int):
        self.decay, self.row_size = decay, row_size
        self.tri: dict[Context, dict[int, float]] = {}
        self.bi: dict[int, dict[int, float]] = {}

    def _add(self, rows: dict, key, weights: dict[int, float]) -> None:
        row = rows.get(key)
        row = {c: w * self.decay for c, w in row.items()} if row else {}
        for c, w in weights.items():
            row[c] = row.get(c, 0.0) + w
        if len(row) > self.row_size:
            row = dict(sorted(row.items(), key=lambda kv: -kv[1])[:self.row_size])
        rows[key] = row

    def update(self, ctx: Context, weights: dict[int, float]) -> None:
        self._add(self.tri, ctx, weights)
        self._add(self.bi, ctx[1], weights)

    def row(self, ctx: Context) -> tuple[str, list[tuple[int, float]]]:
        """('tri' | 'bi' | 'none', [(token, probability)] sorted by probability)."""
        kind, row = ("tri", self.tri.get(ctx)) if ctx in self.tri else ("bi", self.bi.get(ctx[1]))
        if not row:
            return "none", []
        total = sum(row.values())
        return kind, sorted(((c, w / total) for c, w in row.items()), key=lambda cw: (-cw[1], cw[0]))


class Aded(Method):
    name = "aded"
    # what every decode round's Step.state carries (views.method_state draws them; a test checks each round)
    state_keys = ('rows', 'branches', 'simulations')
    title = "ADED (adaptive tri-gram drafts, MCTS-style tree)"
    paper = ("Liu, Lei, Zhang, Xu 2024, Adaptive Draft-Verification for Efficient Large Language Model Decoding "
             "(arXiv:2407.12021, AAAI 2025)")
    lossless = True
    Params = AdedParams

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        self.reset()

    def reset(self) -> None:
        p = self.params
        self.matrix = TrigramMatrix(p.decay, p.row_size)
        self.drafted: dict[tuple[int, int, int], int] = {}  # (a, b, c) -> times drafted and tested
        self.accepted: dict[tuple[int, int, int], int] = {}  # (a, b, c) -> times accepted
        self.visits_ctx: dict[Context, int] = {}

    def start(self, prompt, sampling) -> None:
        if self.params.seed_prompt:
            for a, b, c in zip(prompt, prompt[1:], prompt[2:]):
                self.matrix.update((a, b), {c: 1.0})

    # ---- draft tree ---------------------------------------------------------------------------------

    def _score(self, ctx: Context, tok: int, prob: float, in_round: dict) -> tuple[float, float]:
        p = self.params
        key = (ctx[0], ctx[1], tok)
        n_sa = self.drafted.get(key, 0)
        q = (self.accepted.get(key, 0) + p.prior * prob) / (n_sa + p.prior) if n_sa + p.prior > 0 else prob
        n_s = self.visits_ctx.get(ctx, 0) + in_round.get(ctx, 0)
        u = p.c_puct * prob * math.sqrt(n_s + 1) / (1 + n_sa + in_round.get(key, 0))
        return q, u

    def propose(self, seq, sampling, generator) -> Proposal:
        p = self.params
        root_ctx = (seq[-2] if len(seq) > 1 else -1, seq[-1])
        tokens: list[int] = []
        parents: list[int] = []
        child: dict[tuple[int, int], int] = {}  # (node, token) -> node index (node -1 = the root)
        in_round: dict = {}  # this round's simulation visits, by context and by (a, b, c)
        rows_read: dict[str, list] = {}
        branches: list[dict] = []
        full: set[int] = set()  # nodes whose subtree cannot grow (deepest level, unknown row, all children full)
        sims = 0
        while len(tokens) < p.nodes and sims < 4 * p.nodes + 8 and -1 not in full:
            sims += 1
            node, ctx, depth = -1, root_ctx, 0
            while True:
                row: list = []
                if depth < p.depth:
                    kind, row = self.matrix.row(ctx)
                    if self.detail:
                        rows_read.setdefault(f"{ctx[0]},{ctx[1]}",
                                             [kind] + [[c, round(pr, 3)] for c, pr in row[:p.branch]])
                cands = [(c, pr) for c, pr in row[:p.branch] if child.get((node, c)) not in full]
                if not cands:
                    full.add(node)
                    break
                scored = [(sum(self._score(ctx, c, pr, in_round)), c, pr) for c, pr in cands]
                total, tok, prob = max(scored, key=lambda s: (s[0], s[2], -s[1]))
                in_round[ctx] = in_round.get(ctx, 0) + 1
                key = (ctx[0], ctx[1], tok)
                in_round[key] = in_round.get(key, 0) + 1
                nxt = child.get((node, tok))
                if nxt is None:
                    q, u = self._score(ctx, tok, prob, {})
                    child[(node, tok)] = len(tokens)
                    tokens.append(tok)
                    parents.append(node)
                    branches.append({"p": round(prob, 3), "q": round(q, 3), "u": round(u, 3)})
                    break
                node, ctx, depth = nxt, (ctx[1], tok), depth + 1
        return Proposal(tokens=tokens, parents=parents,
                        state={"rows": rows_read, "branches": branches, "simulations": sims})

    # ---- learning -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def observe(self, v: Verified) -> dict:
        p = self.params
        prop = v.proposal
        root = v.seq[-1]
        root_ctx = (v.seq[-2] if len(v.seq) > 1 else -1, root)
        # contexts of the verify positions: the root, then each node in its tree context
        pos_ctx = [root_ctx] + [((prop.tokens[par] if par >= 0 else root), t)
                                for t, par in zip(prop.tokens, prop.parents)]
        top = torch.topk(torch.softmax(v.logits.float(), -1), min(p.k_update, v.logits.shape[-1]), dim=-1)
        vals, idx = top.values.tolist(), top.indices.tolist()
        for ctx, ws, cs in zip(pos_ctx, vals, idx):
            self.matrix.update(ctx, dict(zip(cs, ws)))
        # acceptance statistics of the transitions that were actually tested (parent = root or accepted)
        on_path = set(v.path)
        tested = acc = 0
        for i, par in enumerate(prop.parents):
            if par >= 0 and par not in on_path:
                continue
            a, b = pos_ctx[par + 1]  # the context the node was drafted from: its parent's position
            key = (a, b, prop.tokens[i])
            self.drafted[key] = self.drafted.get(key, 0) + 1
            self.visits_ctx[(a, b)] = self.visits_ctx.get((a, b), 0) + 1
            tested += 1
            if i in on_path:
                self.accepted[key] = self.accepted.get(key, 0) + 1
                acc += 1
        return {"rows_updated": len(pos_ctx), "trigram_rows": len(self.matrix.tri),
                "bigram_rows": len(self.matrix.bi), "tested": tested, "accepted_transitions": acc,
                "tree_depth": max(tree.depths(prop.parents)) if prop.parents else 0}

    def describe(self) -> str:
        p = self.params
        return f"ADED: {p.nodes}-node PUCT tree (c_puct={p.c_puct}) over an adaptive tri-gram matrix"
