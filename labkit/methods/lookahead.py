"""Lookahead decoding: Jacobi iterations over a window produce n-grams into a pool; pool n-grams that start
with the last committed token are verified in the same forward pass. With sampling, the window is verified
with the Speculative Jacobi Decoding acceptance rule.

Fu, Bailis, Stoica and Zhang, "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding"
(ICML 2024, arXiv:2402.02057); Teng et al., "Accelerating Auto-regressive Text-to-Image Generation with
Training-free Speculative Jacobi Decoding" (2024, arXiv:2410.01699). Lossless (see "Sampling" below).

The window (W columns, N-1 levels) lives at absolute positions: cell (level l, column j) guesses the token at
position root + 1 + l + j. Level 0 is the current Jacobi guess; each higher level is one Jacobi step newer.
Every round builds ONE tree, verified in one forward pass (the engine's tree mask does the rest):

- verification branch: up to G pool n-grams keyed by the root token, merged into a trie under the root;
- lookahead branch: level 0 as a chain under the root (the "trunk"), and under trunk column j the diagonal
  (level 1, column j), (level 2, column j), ... This is exactly Lookahead's 2D-window attention pattern (each
  window token sees the level-0 tokens before it and its own diagonal), written as a parent array.

After verification, the outputs at the last level's nodes are the new Jacobi tokens; each column's diagonal
plus its new token is an n-gram for the pool (key: its first token). The levels then move down one level and
left by the number of extra tokens committed, so every cell keeps guessing the same absolute position; cells
shifted in from beyond the window copy the level's last cell. Every window token is also a draft: a trunk
guess that matches the target is accepted like any other node (plain Jacobi decoding).

Sampling. Pool n-grams and diagonal tokens are deterministic drafts (point masses): the engine's rule for them,
sampling without replacement from p, is lossless whatever produced them. The trunk follows SJD: each cell keeps
the distribution q its token was sampled from, the trunk tokens are drawn afresh from those q at the start of
every round, and a trunk token x is accepted with probability min(1, p(x)/q(x)); after a rejection p becomes
norm(max(0, p - q)). Siblings now come from different distributions (pool point masses, a q-sampled trunk
token), so this method overrides `accept` with recursive rejection where every child uses its own q
(`Proposal.q[i]` is node i's own distribution; point masses are one-hot rows). That rule is exact because each
trunk token is a fresh independent draw whose value nothing has used before its test (values enter the pool
only after the round, and the trunk is redrawn next round). Greedy decoding uses argmax everywhere.

Trace: the window (levels of tokens), pool size, the verified candidates, which candidate (or the window) won,
how many n-grams were harvested.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..accept import rejection_per_node
from ..sampling import GREEDY, probs as sampling_probs
from ..engine import Method, Proposal, Verified
from ..params import param


@dataclass
class LookaheadParams:
    window: int = param(4, "Jacobi window width W (positions guessed ahead); the paper uses 5-15 on a GPU",
                        lo=1, hi=32)
    ngram: int = param(3, "n-gram size N; the window keeps N-1 levels of the Jacobi trajectory", lo=2, hi=8)
    guesses: int = param(2, "pool n-grams verified per round (G); tree = (W + G) * (N - 1) nodes at most",
                         lo=0, hi=32)
    pool_cap: int = param(8, "n-grams kept per first token (most recent first)", lo=1, hi=256)
    prompt_ngrams: bool = param(True, "also put the prompt's n-grams into the pool at the start of a generation")


class Lookahead(Method):
    name = "lookahead"
    # what every decode round's Step.state carries (views.method_state draws them; a test checks each round)
    state_keys = ('window', 'pool_size', 'candidates')
    title = "Lookahead decoding (Jacobi n-gram pool; SJD acceptance when sampling)"
    paper = ("Fu, Bailis, Stoica, Zhang 2024, Break the Sequential Dependency of LLM Inference Using Lookahead "
             "Decoding (ICML, arXiv:2402.02057); Teng et al. 2024, Accelerating Auto-regressive Text-to-Image "
             "Generation with Training-free Speculative Jacobi Decoding (arXiv:2410.01699)")
    lossless = True
    Params = LookaheadParams

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        head = lm.model.get_output_embeddings().weight
        self.vocab, self.qdev = head.shape[0], head.device  # draft rows live where the logits come out
        self.reset()

    def reset(self) -> None:
        self.pool: dict[int, list[tuple[int, ...]]] = {}
        self.tok: list[list[int]] = []
        self.q: list[list[torch.Tensor | None]] = []
        self._layout: dict = {}
        self._gen: torch.Generator | None = None
        self._sampling = GREEDY

    def _add_ngram(self, gram: tuple[int, ...]) -> bool:
        entries = self.pool.setdefault(gram[0], [])
        rest = gram[1:]
        new = rest not in entries
        if not new:
            entries.remove(rest)
        entries.insert(0, rest)
        del entries[self.params.pool_cap:]
        return new

    def start(self, prompt, sampling) -> None:
        p = self.params
        rng = random.Random(len(prompt))  # lookahead fills the window with tokens of the prompt
        self.tok = [[rng.choice(prompt) for _ in range(p.window)] for _ in range(p.ngram - 1)]
        self.q = [[None] * p.window for _ in range(p.ngram - 1)]
        if p.prompt_ngrams:
            for i in range(len(prompt) - p.ngram + 1):
                self._add_ngram(tuple(prompt[i:i + p.ngram]))

    def pool_size(self) -> int:
        return sum(len(v) for v in self.pool.values())

    # ---- the tree -----------------------------------------------------------------------------------

    def propose(self, seq, sampling, generator) -> Proposal:
        p = self.params
        self._gen, self._sampling = generator, sampling
        levels = p.ngram - 1
        if not sampling.greedy:  # SJD: the trunk is redrawn from its distributions every round
            for j, q in enumerate(self.q[0]):
                if q is not None:
                    self.tok[0][j] = int(torch.multinomial(q, 1, generator=generator))
        root = seq[-1]
        tokens: list[int] = []
        parents: list[int] = []
        qrows: dict[int, torch.Tensor] = {}

        def add(tok: int, parent: int) -> int:
            tokens.append(tok)
            parents.append(parent)
            return len(tokens) - 1

        cands = self.pool.get(root, [])[:p.guesses]
        trie: dict[tuple[int, int], int] = {}
        for cand in cands:
            parent = -1
            for t in cand:
                if (parent, t) not in trie:
                    trie[(parent, t)] = add(t, parent)
                parent = trie[(parent, t)]
        n_pool = len(tokens)
        cell_node = [[-1] * p.window for _ in range(levels)]  # the tree node each window cell is verified as
        trunk, parent = cell_node[0], -1
        for j in range(p.window):
            parent = trunk[j] = add(self.tok[0][j], parent)
            if self.q[0][j] is not None:
                qrows[parent] = self.q[0][j]
        for j in range(p.window):
            parent = trunk[j]
            for lev in range(1, levels):
                parent = cell_node[lev][j] = add(self.tok[lev][j], parent)
        self._layout = {"cands": cands, "n_pool": n_pool, "last": cell_node[-1]}  # last level's node per column
        q = None
        if not sampling.greedy:
            q = torch.zeros(len(tokens), self.vocab, device=self.qdev)
            q[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
            for i, row in qrows.items():
                q[i] = row
        return Proposal(tokens=tokens, parents=parents, q=q,
                        state={"window": [list(level) for level in self.tok], "pool_size": self.pool_size(),
                               "candidates": [list(c) for c in cands], "pool_nodes": n_pool,
                               "window_nodes": cell_node})

    def accept(self, prop, logits, sampling, generator, label):
        if sampling.greedy or prop.q is None:
            return super().accept(prop, logits, sampling, generator, label)
        return rejection_per_node(prop.parents, prop.tokens, sampling_probs(logits, sampling), prop.q, generator)

    # ---- Jacobi step, n-gram harvest, window shift --------------------------------------------------

    @torch.inference_mode()
    def observe(self, v: Verified) -> dict:
        p = self.params
        lay = self._layout
        n = len(v.proposal.tokens)
        won = None
        if v.path:
            first = v.path[0]
            if first < lay["n_pool"]:
                acc = [v.proposal.tokens[i] for i in v.path if i < lay["n_pool"]]
                won = next((f"pool[{k}]" for k, c in enumerate(lay["cands"]) if list(c[:len(acc)]) == acc), "pool")
            else:
                won = "window"
        # the new Jacobi tokens: the target's output at each column's last-level node
        cols = [j for j, node in enumerate(lay["last"]) if node < n]  # the token budget may have cut nodes
        new_tok: dict[int, int] = {}
        new_q: dict[int, torch.Tensor | None] = {}
        if cols:
            rows = v.logits[[lay["last"][j] + 1 for j in cols]]
            if self._sampling.greedy:
                picks = rows.argmax(-1).tolist()
                for j, t in zip(cols, picks):
                    new_tok[j], new_q[j] = t, None
            else:
                probs = sampling_probs(rows, self._sampling)
                picks = torch.multinomial(probs, 1, generator=self._gen)[:, 0].tolist()
                for k, (j, t) in enumerate(zip(cols, picks)):
                    new_tok[j], new_q[j] = t, probs[k]
        harvested = 0
        for j in cols:
            gram = tuple(self.tok[lev][j] for lev in range(p.ngram - 1)) + (new_tok[j],)
            harvested += self._add_ngram(gram)
        # move down one level and left by the extra committed tokens (cells keep their absolute positions)
        shift = len(v.path)
        src_tok = self.tok[1:] + [[new_tok.get(j, self.tok[-1][j]) for j in range(p.window)]]
        src_q = self.q[1:] + [[new_q.get(j, self.q[-1][j]) for j in range(p.window)]]
        for lev in range(p.ngram - 1):
            idx = [min(i + shift, p.window - 1) for i in range(p.window)]
            self.tok[lev] = [src_tok[lev][i] for i in idx]
            self.q[lev] = [src_q[lev][i] for i in idx]
        return {"won": won, "harvested": harvested, "pool_size_after": self.pool_size(), "shift": shift}

    def describe(self) -> str:
        p = self.params
        return (f"Lookahead: window {p.window} x {p.ngram - 1} levels, {p.ngram}-gram pool, {p.guesses} guesses "
                f"per round")
