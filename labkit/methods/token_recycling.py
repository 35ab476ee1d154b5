"""Token Recycling: draft from the candidate tokens the target already produced and threw away.

Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large Language Models with Token
Recycling", ACL 2025, arXiv:2408.08696. Lossless (training-free tree drafts, verified by the target).

- An adjacency matrix M[V, k] stores, for every token, the top-k tokens the target predicted after it
  the last time that token was verified. Unknown rows are -1 (those branches are not drafted). Departure:
  the reference initialises M with zeros, so an unknown row drafts token 0 (nodes that are verified and
  rejected); labkit prunes them, so its early trees are smaller than the template.
- Each round, a draft tree is read off M breadth-first along a static template: a node at template path
  (r1, ..., rd) gets token M[parent_token, rd]. The paper's default template has 80 nodes in 6 levels with
  k = 8.
- Tree size: with `sizing=auto` (default) the tree is re-chosen every few rounds by `labkit.sizing`: the
  template paths ordered by their estimated acceptance probability, cut at the size that maximises expected
  tokens per second on this device's measured latency curve, down to no draft at all (plain decoding) when
  drafts do not pay. The acceptance estimate is free: after every verify pass, for EVERY verified position
  (root and nodes), the rank in M's row whose token equals the target's next token is recorded (per depth).
  With `sizing=off`, the best `nodes` template paths by a fixed rank prior (labkit's; `nodes=80`, the default,
  is the paper's whole template, where the order does not matter) are drafted every round.
- After verification, every verified position (the root and all nodes) refreshes its row with the top-k
  of its target logits. The matrix persists across prompts of a session until `reset()`.
- `prompt_rows=True` (off by default; a labkit extension) fills the rows of the prompt's tokens from the
  target's logits at the prompt's positions (the engine's own prefill pass computes them: no extra forward,
  only the LM head over up to 256 positions), so a fresh matrix drafts from the first round.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..accept import greedy_tree
from .. import sizing
from .. import tree
from ..engine import Method, Proposal, Verified
from ..params import param
from ..templates import RANK_PRIOR, best_subtree, paper_choices

@dataclass
class TokenRecyclingParams:
    k: int = param(8, "successor candidates stored per token (matrix columns)", lo=1, hi=32)
    nodes: int = param(80, "draft-tree size with sizing=off (the best `nodes` paths of the paper's 80-node "
                           "template); with sizing=auto the largest tree it may pick", lo=1, hi=80)
    sizing: str = param("auto", "auto: hardware-aware tree size from the measured latency curve and the observed "
                                "acceptance (down to plain decoding); off: always `nodes` nodes",
                        choices=("auto", "off"))
    prompt_rows: bool = param(False, "fill the matrix from the prompt: the prefill's top-k at each of the prompt's "
                                     "last 256 positions becomes that token's row (a labkit extension, not in the "
                                     "paper: a fresh matrix can draft from the first round)")


PROMPT_ROWS_MAX = 256  # prompt positions read by prompt_rows (bounds the prefill's [n, V] logits)


@dataclass(frozen=True)
class _Template:
    """A draft-tree template as arrays: parents/ranks per node, and node indices level by level."""

    choices: tuple[tuple[int, ...], ...]
    parents: list[int]
    parents_np: np.ndarray
    ranks: np.ndarray
    depth: np.ndarray
    levels: tuple[np.ndarray, ...]

    @classmethod
    def build(cls, choices) -> "_Template":
        parents, ranks = tree.from_choices(choices)
        depth = np.asarray(tree.depths(parents), dtype=np.int64)
        levels = tuple(np.flatnonzero(depth == d) for d in range(1, int(depth.max(initial=0)) + 1))
        return cls(tuple(sorted((tuple(c) for c in choices), key=lambda c: (len(c), c))), list(parents),
                   np.asarray(parents, dtype=np.int64), np.asarray(ranks, dtype=np.int64), depth, levels)


class TokenRecycling(Method):
    name = "token_recycling"
    # what every decode round's Step.state carries (views.method_state draws them; a test checks each round)
    state_keys = ('rows_read', 'matrix_rows_known')
    title = "Token Recycling"
    paper = "Luo et al. 2024, Turning Trash into Treasure: Token Recycling (arXiv:2408.08696, ACL 2025)"
    lossless = True
    Params = TokenRecyclingParams

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        vocab = lm.model.get_output_embeddings().weight.shape[0]
        # The matrix lives on the host (a few MB): drafting reads it with numpy, no device round trips.
        self.matrix = torch.full((vocab, self.params.k), -1, dtype=torch.long)
        self._m = self.matrix.numpy()
        self._known = 0
        self._templates: dict[tuple, _Template] = {}
        candidates = [c for c in paper_choices() if max(c) < self.params.k]
        self.sizer = None
        if self.params.sizing == "auto":
            self.sizer = sizing.TreeSizer(lm, candidates, self.params.k, self.params.nodes, prior=RANK_PRIOR)
        self._candidates = candidates
        self.set_template(best_subtree(candidates, self.params.nodes))
        self._first_round = True
        self._prompt_info: dict = {}  # what prompt_rows did, reported in the next proposal's state
        self._pinned: _Template | None = None

    def set_template(self, choices) -> None:
        """Draft this fixed template every round (turns hardware-aware sizing off)."""
        self._fixed = _Template.build(choices)
        self.choices = list(self._fixed.choices)
        self.t_parents = self._fixed.parents

    def reset(self) -> None:
        self.matrix.fill_(-1)
        self._known = 0
        if self.sizer is not None:
            self.sizer.reset()

    def start(self, prompt, sampling) -> None:
        self._first_round = True
        self._prompt_info = {}

    def prompt_positions(self) -> int:
        return PROMPT_ROWS_MAX if self.params.prompt_rows else 0

    @torch.inference_mode()
    def observe_prompt(self, prompt: list[int], logits: torch.Tensor) -> None:
        """prompt_rows: overwrite the rows of the prompt's tokens with the target's top-k after each of them
        (from the engine's prefill pass); what it did goes into the first decode Step's state."""
        inputs = np.asarray(prompt[len(prompt) - len(logits):], dtype=np.int64)
        top = torch.topk(logits, self.params.k, dim=-1).indices.cpu().numpy()
        new_rows = np.unique(inputs[self._m[inputs, 0] < 0])
        self._known += int(new_rows.size)
        self._m[inputs] = top
        self._prompt_info = {"prompt_rows": {"read": len(inputs), "new_rows": int(new_rows.size)}}

    @contextlib.contextmanager
    def warm_up(self, nodes: int = 80):
        """Inside this block every round drafts the best `nodes` template paths (sizing paused, its acceptance
        estimate still learning): a big tree refreshes up to nodes + 1 matrix rows per round, so a cold matrix
        warms fast. `labkit bench` runs its warm-up questions inside it."""
        self._pinned = _Template.build(best_subtree(self._candidates, nodes))
        try:
            yield self
        finally:
            self._pinned = None

    def _template(self) -> tuple[_Template, dict]:
        if self._pinned is not None:
            return self._pinned, {"warm_up": True}
        if self.sizer is None:
            return self._fixed, {}
        paths, _ = self.sizer.choose()
        key = tuple(paths)
        tpl = self._templates.get(key)
        if tpl is None:
            if len(self._templates) > 512:
                self._templates.clear()
            tpl = self._templates[key] = _Template.build(paths)
        info = {"sizing": self.sizer.state()}
        if self._first_round:
            curve = self.sizer.curve
            info["latency_curve"] = {"tokens": list(curve.tokens), "ms": [round(s * 1e3, 3) for s in curve.seconds]}
        return tpl, info

    def _clock(self) -> float:
        return self.sizer.clock() if self.sizer is not None else 0.0

    def propose(self, seq, sampling, generator) -> Proposal:
        t0 = self._clock()
        tpl, info = self._template()
        self._first_round = False
        n = len(tpl.parents)
        state = {"template_nodes": n, **info, **self._prompt_info}
        self._prompt_info = {}
        if n == 0:
            state["drafted"] = 0
            if self.detail:
                state["rows_read"] = {}  # no row read: plain decoding this round
            self._t_propose = self._clock() - t0
            return Proposal(state=state)
        # level by level, a node's token is M[parent token, rank]; -1 marks an unknown row
        m = self._m
        root = seq[-1]
        tokens = np.full(n, -1, dtype=np.int64)
        for idx in tpl.levels:
            par = tpl.parents_np[idx]
            par_tok = np.where(par < 0, root, tokens[np.maximum(par, 0)])
            tok = m[np.maximum(par_tok, 0), tpl.ranks[idx]]
            tokens[idx] = np.where(par_tok < 0, -1, tok)
        keep = np.flatnonzero(tokens >= 0)  # unknown parents are -1 too, so subtrees drop out
        new_index = np.cumsum(tokens >= 0) - 1
        par = tpl.parents_np[keep]
        parents = np.where(par >= 0, new_index[np.maximum(par, 0)], -1)
        state["drafted"] = int(len(keep))
        if self.detail:
            used = sorted({root} | {int(tokens[p]) for p in tpl.parents if p >= 0 and tokens[p] >= 0})
            state["rows_read"] = {str(t): m[t].tolist() for t in used}
        self._t_propose = self._clock() - t0
        return Proposal(tokens=tokens[keep].tolist(), parents=parents.tolist(), state=state)

    @torch.inference_mode()
    def accept(self, prop, logits, sampling, generator, label):
        """The default rule; in greedy mode the argmax and the matrix's top-k leave the device in ONE copy (on a
        GPU that is the round's only host sync)."""
        self._top = None
        if not sampling.greedy:
            return super().accept(prop, logits, sampling, generator, label)
        both = torch.cat([logits.argmax(-1, keepdim=True), torch.topk(logits, self.params.k, dim=-1).indices], dim=1)
        both = both.cpu().numpy()
        self._top = both[:, 1:]
        return greedy_tree(prop.parents, prop.tokens, both[:, 0].tolist(), label)

    @torch.inference_mode()
    def observe(self, v: Verified) -> dict:
        t0 = self._clock()
        inputs = np.asarray([v.seq[-1]] + list(v.proposal.tokens), dtype=np.int64)
        top = getattr(self, "_top", None)
        if top is None or top.shape[0] != inputs.size:
            top = torch.topk(v.logits, self.params.k, dim=-1).indices.cpu().numpy()
        self._top = None
        before = self._m[inputs]
        if self.sizer is not None:
            # which rank of each verified position's row held the target's next token (-1: none)
            hit = before == top[:, :1]
            rank = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
            child_depth = np.concatenate([[1], np.asarray(tree.depths(v.proposal.parents), dtype=np.int64) + 1])
            self.sizer.acceptance.update(child_depth, rank)
        new_rows = np.unique(inputs[before[:, 0] < 0])
        self._known += int(new_rows.size)
        self._m[inputs] = top
        changed = int((before != top).any(axis=1).sum())
        if self.sizer is not None and v.proposal.tokens and self._pinned is None:
            self.sizer.overhead.add(getattr(self, "_t_propose", 0.0) + self._clock() - t0)
        return {"rows_updated": int(inputs.size), "rows_changed": changed, "matrix_rows_known": self._known}

    def state_bytes(self) -> int:
        """Memory held across prompts: the adjacency matrix."""
        return int(self.matrix.numel() * self.matrix.element_size())

    def describe(self) -> str:
        if self.sizer is not None:
            return (f"Token Recycling (k={self.params.k}, sizing=auto: labkit's hardware-aware tree of "
                    f"0..{self.sizer.max_nodes} nodes from the paper's 80-node template)")
        fixed = "the paper's fixed 80-node tree" if len(self.t_parents) == 80 else \
            f"a fixed {len(self.t_parents)}-node tree from the paper's 80-node template"
        return f"Token Recycling (k={self.params.k}, sizing=off: {fixed})"
