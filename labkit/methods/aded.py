"""ADED: an adaptive tri-gram model of the target's own outputs, and an MCTS draft tree over it.

Liu, Lei, Zhang and Xu, "Adaptive Draft-Verification for Efficient Large Language Model Decoding" (AAAI 2025,
arXiv:2407.12021). Lossless: the tree is verified by the target; the drafts are deterministic (point masses),
so the default rule keeps sampling exact.

Two modes.

`mode=reference` follows the reference code's mechanism (DraftRetriever's tri-gram table and its MCTS, as
issue 14 describes them; the code itself was not readable from here, so the constants below are the issue's):
- tri-gram weights T[(a, b)][c] start EMPTY (the reference builds its table from a corpus; labkit has none, so
  this mode is corpus-free) and grow by a fixed bump (`bump` = +0.04, capped at `cap` = 1.0) for every
  tri-gram of the committed text (the prompt and each round's accepted tokens and bonus token);
- MCTS, `iterations` = 150 per round: select by PUCT over the row's probabilities (prior P), expand one
  untried child, roll out greedily through the table to `depth`, score the walk by its probability under the
  table (the value), back the value up the selected path;
- the draft tree is the union of the `sequences` = 24 most-visited search paths, each extended greedily
  through the table to `depth` (the reference's greedy extension).

`mode=labkit` (the default) is labkit's own design, measured beside it in docs/zoo_sources.md:

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
    mode: str = param("labkit", "labkit: target top-k updates with decay, a PUCT tree from observed acceptance; "
                                "reference: bump-count tri-grams of the committed text, MCTS with rollouts, the "
                                "most-visited sequences + greedy extension", choices=("labkit", "reference"))
    iterations: int = param(150, "reference mode: MCTS iterations per round", lo=1, hi=2000)
    sequences: int = param(24, "reference mode: most-visited search paths drafted", lo=1, hi=128)
    bump: float = param(0.04, "reference mode: weight added to a committed tri-gram", lo=0.0, hi=1.0)
    cap: float = param(1.0, "reference mode: largest tri-gram weight", lo=0.0, hi=100.0)
    nodes: int = param(10, "labkit mode: draft-tree size (simulations that add a node); a GPU verifies 64+ at "
                           "once", lo=1, hi=128)
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
    variants = ({"mode": "reference"},)

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        self.reset()

    def reset(self) -> None:
        p = self.params
        self.matrix = TrigramMatrix(p.decay, p.row_size)
        self.drafted: dict[tuple[int, int, int], int] = {}  # (a, b, c) -> times drafted and tested
        self.accepted: dict[tuple[int, int, int], int] = {}  # (a, b, c) -> times accepted
        self.visits_ctx: dict[Context, int] = {}
        self.counts: dict[Context, dict[int, float]] = {}  # reference mode: bumped tri-gram weights

    @property
    def reference(self) -> bool:
        return self.params.mode == "reference"

    def start(self, prompt, sampling) -> None:
        if self.reference:
            self._bump(prompt, 2)
            return
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
        if self.reference:
            return self._propose_reference(seq)
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

    # ---- reference mode ---------------------------------------------------------------------------

    def _bump(self, toks: list[int], first: int) -> None:
        """Add `bump` (capped) to the tri-gram ending at each position >= `first` of `toks`."""
        p = self.params
        for i in range(max(first, 2), len(toks)):
            row = self.counts.setdefault((toks[i - 2], toks[i - 1]), {})
            row[toks[i]] = min(p.cap, row.get(toks[i], 0.0) + p.bump)

    def _ref_row(self, ctx: Context) -> list[tuple[int, float]]:
        row = self.counts.get(ctx)
        if not row:
            return []
        total = sum(row.values())
        return sorted(((c, w / total) for c, w in row.items()), key=lambda cw: (-cw[1], cw[0]))[:self.params.branch]

    def _rollout(self, ctx: Context, depth: int) -> tuple[float, list[int]]:
        """Greedy walk through the table from `ctx` to the draft depth: (its probability, its tokens)."""
        value, walk = 1.0, []
        while depth < self.params.depth:
            row = self._ref_row(ctx)
            if not row:
                break
            tok, prob = row[0]
            value *= prob
            walk.append(tok)
            ctx, depth = (ctx[1], tok), depth + 1
        return value, walk

    def _propose_reference(self, seq) -> Proposal:
        p = self.params
        root_ctx = (seq[-2] if len(seq) > 1 else -1, seq[-1])
        visits: dict[tuple[int, ...], int] = {(): 0}
        value: dict[tuple[int, ...], float] = {}
        prior: dict[tuple[int, ...], float] = {}
        rows_read: dict[str, list] = {}
        for _ in range(p.iterations):
            path, ctx, reach = (), root_ctx, 1.0  # reach: the probability of the selected path under the table
            while len(path) < p.depth:
                row = self._ref_row(ctx)
                if self.detail and row:
                    rows_read.setdefault(f"{ctx[0]},{ctx[1]}", ["tri"] + [[c, round(pr, 3)] for c, pr in row])
                if not row:
                    break
                fresh = [(c, pr) for c, pr in row if path + (c,) not in visits]
                if fresh:  # expand the most probable untried child
                    c, pr = fresh[0]
                    path += (c,)
                    visits[path], value[path], prior[path] = 0, 0.0, pr
                    reach *= pr
                    ctx = (ctx[1], c)
                    break
                n = visits[path]

                def puct(cp):
                    child = path + (cp[0],)
                    q = value[child] / visits[child] if visits[child] else 0.0
                    return q + p.c_puct * cp[1] * math.sqrt(n) / (1 + visits[child])
                c, pr = max(row, key=puct)
                path += (c,)
                reach *= pr
                ctx = (ctx[1], c)
            tail, _ = self._rollout(ctx, len(path))
            for k in range(len(path) + 1):  # back the value up the selected path
                visits[path[:k]] = visits.get(path[:k], 0) + 1
                if k:
                    value[path[:k]] += reach * tail
        ranked = sorted((q for q in visits if q), key=lambda q: (-visits[q], len(q), q))[:p.sequences]
        chosen: set[tuple[int, ...]] = set()
        for q in ranked:
            _, ext = self._rollout((root_ctx + q)[-2:], len(q))
            full = q + tuple(ext)  # the greedy extension
            chosen.update(full[:k] for k in range(1, len(full) + 1))
        order = sorted(chosen, key=lambda q: (len(q), -visits.get(q, 0), q))
        index = {q: i for i, q in enumerate(order)}
        tokens = [q[-1] for q in order]
        parents = [index[q[:-1]] if len(q) > 1 else -1 for q in order]
        branches = [{"p": round(prior.get(q, 0.0), 3),
                     "q": round(value[q] / visits[q], 3) if visits.get(q) else 0.0,
                     "u": visits.get(q, 0)} for q in order]
        return Proposal(tokens=tokens, parents=parents,
                        state={"rows": rows_read, "branches": branches, "simulations": p.iterations,
                               "mode": "reference"})

    # ---- learning -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def observe(self, v: Verified) -> dict:
        p = self.params
        prop = v.proposal
        if self.reference:  # the committed text grows the table: accepted tokens and the bonus
            committed = list(v.seq) + [prop.tokens[i] for i in v.path] + [v.bonus]
            self._bump(committed, len(v.seq))
            return {"trigram_rows": len(self.counts),
                    "tree_depth": max(tree.depths(prop.parents)) if prop.parents else 0}
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
        if self.reference:
            return (f"ADED (the reference's mechanism): MCTS with rollouts ({p.iterations} iterations) over bumped "
                    f"tri-gram counts, the {p.sequences} most-visited sequences + greedy extension")
        return (f"ADED (labkit's variant): {p.nodes}-node PUCT tree (c_puct={p.c_puct}) over an adaptive tri-gram "
                "matrix")
