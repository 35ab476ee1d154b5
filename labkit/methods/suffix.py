"""SuffixDecoding: draft trees from suffix trees over the prompt and the session's earlier outputs.

Oliaro, Jia, Campos, Qiao, "SuffixDecoding: Extreme Speculative Decoding for Emerging AI Applications"
(arXiv:2411.04975, NeurIPS 2025); vLLM's `suffix` speculative method (Arctic Inference). REST (He et al.,
"REST: Retrieval-Based Speculative Decoding", NAACL 2024) drafts from a datastore the same way. Training-free and
model-free. Lossless: the tree is verified by the target in one pass; drafts are point masses, so the default
rule keeps sampling exact.

- Two suffix tries of bounded depth (`max_depth`): one over this request (the prompt and what has been
  generated so far, grown token by token), one over the session's earlier outputs (grown at the start of each
  generation with the previous output; it persists across prompts until `reset()`, as SuffixDecoding's global
  tree persists across requests). Each node counts how often its path occurred.
- Each round the longest suffix of the text (up to `max_depth - 1` tokens) that occurs in a trie is matched;
  from the matched node a tree is grown best-first by the empirical probability of each path (a child's count
  over the count of all its siblings, multiplied down the path), keeping nodes whose path probability is at least `min_prob`,
  up to `factor` x the match length nodes (a long match earns a large tree: SuffixDecoding's adaptive
  speculation length) and at most `max_nodes`. Of the two tries' trees the one with the larger score (the sum of
  its path probabilities: the expected number of accepted tokens) is drafted.

Departures: the paper and vLLM keep true suffix trees over many requests with a cache bound; here both are
depth-bounded suffix tries in Python dicts, the history stops growing at `max_history` tokens, and the
per-request trie is rebuilt when the text is not an extension of the last one.

Trace (`Step.state`): which trie drafted (`source`: "request" | "history" | None), `match_len`, `score`, the
path probability of every drafted node (`probs`), and both tries' best scores (`scores`).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from ..engine import Method, Proposal
from ..params import param
from .prompt_lookup import COPY_EXAMPLE


@dataclass
class SuffixParams:
    max_depth: int = param(24, "depth of the suffix tries: the longest pattern matched plus what follows it",
                           lo=2, hi=128)
    max_nodes: int = param(16, "most draft-tree nodes per round", lo=1, hi=128)
    factor: float = param(1.0, "draft at most factor x the match length nodes (SuffixDecoding's adaptive length)",
                          lo=0.1, hi=16.0)
    min_prob: float = param(0.1, "smallest path probability a drafted node may have", lo=0.0, hi=1.0)
    max_history: int = param(65536, "tokens of earlier outputs the history trie holds (then it stops growing)",
                             lo=0, hi=1 << 22)


class _Node:
    __slots__ = ("count", "children")

    def __init__(self):
        self.count = 0
        self.children: dict[int, _Node] = {}


class SuffixTrie:
    """Every suffix of the token sequences added, up to `depth` tokens, with occurrence counts."""

    def __init__(self, depth: int):
        self.depth = depth
        self.root = _Node()
        self.tokens = 0
        self._open: list[_Node] = []  # nodes of the suffixes still growing (the last depth - 1 starts)

    def start(self) -> None:
        """Begin a new sequence: no suffix continues across sequences."""
        self._open = []

    def append(self, token: int) -> None:
        """Extend every open suffix (and a new one starting here) by `token`."""
        grown = []
        for node in [self.root] + self._open:
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = _Node()
            child.count += 1
            grown.append(child)
        self.root.count += 1
        self.tokens += 1
        self._open = grown[: self.depth - 1]  # a suffix of depth tokens is complete

    def extend(self, tokens) -> None:
        for t in tokens:
            self.append(int(t))

    def match(self, seq: list[int]) -> tuple[_Node | None, int]:
        """The node of the longest suffix of `seq` (at most depth - 1 tokens) that occurs, and its length."""
        for m in range(min(self.depth - 1, len(seq)), 0, -1):
            node = self.root
            for t in seq[len(seq) - m:]:
                node = node.children.get(t)
                if node is None:
                    break
            if node is not None and node.children:
                return node, m
        return None, 0

    def grow(self, node: _Node, budget: int, min_prob: float) -> tuple[list[int], list[int], list[float]]:
        """Best-first tree under `node`: (tokens, parents, path probabilities), most probable paths first."""
        tokens: list[int] = []
        parents: list[int] = []
        probs: list[float] = []

        def total(n: _Node) -> int:  # occurrences of the path that continued (the text's own end did not)
            return sum(c.count for c in n.children.values())
        first = total(node)
        heap = [(-c.count / first, i, tok, -1, c) for i, (tok, c) in enumerate(node.children.items())]
        heapq.heapify(heap)
        tie = len(heap)
        while heap and len(tokens) < budget:
            neg, _, tok, parent, child = heapq.heappop(heap)
            prob = -neg
            if prob < min_prob:
                break
            index = len(tokens)
            tokens.append(tok)
            parents.append(parent)
            probs.append(prob)
            below = total(child)
            for t, grand in child.children.items():
                tie += 1
                heapq.heappush(heap, (-prob * grand.count / below, tie, t, index, grand))
        return tokens, parents, probs


class SuffixDecoding(Method):
    name = "suffix"
    title = "SuffixDecoding (suffix trees over the prompt and earlier outputs)"
    paper = ("Oliaro et al. 2024, SuffixDecoding: Extreme Speculative Decoding for Emerging AI Applications "
             "(arXiv:2411.04975); He et al. 2024, REST: Retrieval-Based Speculative Decoding (NAACL)")
    lossless = True
    Params = SuffixParams
    example = COPY_EXAMPLE
    state_keys = ("source", "match_len", "score", "probs")

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        self.reset()

    def reset(self) -> None:
        self.history = SuffixTrie(self.params.max_depth)
        self.request = SuffixTrie(self.params.max_depth)
        self.fed: list[int] = []  # what the request trie holds
        self.prompt_len = 0

    def start(self, prompt, sampling) -> None:
        # the previous generation's output joins the history (SuffixDecoding's global tree)
        output = self.fed[self.prompt_len:]
        if output and self.history.tokens + len(output) <= self.params.max_history:
            self.history.start()
            self.history.extend(output)
        self.request = SuffixTrie(self.params.max_depth)
        self.request.extend(prompt)
        self.fed = list(prompt)
        self.prompt_len = len(prompt)

    def _sync(self, seq: list[int]) -> None:
        n = len(self.fed)
        if len(seq) < n or seq[:n] != self.fed:  # not an extension: rebuild
            self.request = SuffixTrie(self.params.max_depth)
            self.fed, n = [], 0
        self.request.extend(seq[n:])
        self.fed.extend(seq[n:])

    def propose(self, seq, sampling, generator) -> Proposal:
        p = self.params
        self._sync(seq)
        best = None
        scores = {}
        for source, trie in (("request", self.request), ("history", self.history)):
            node, m = trie.match(seq)
            if node is None:
                continue
            budget = min(p.max_nodes, max(1, math.ceil(p.factor * m)))
            tokens, parents, probs = trie.grow(node, budget, p.min_prob)
            scores[source] = round(sum(probs), 3)
            if tokens and (best is None or sum(probs) > best[0]):
                best = (sum(probs), source, m, tokens, parents, probs)
        if best is None:
            return Proposal(state={"source": None, "match_len": 0, "score": 0.0, "probs": [], "scores": scores})
        score, source, m, tokens, parents, probs = best
        return Proposal(tokens=tokens, parents=parents,
                        state={"source": source, "match_len": m, "score": round(score, 3),
                               "probs": [round(x, 3) for x in probs], "scores": scores})

    def state_bytes(self) -> int:
        # about 200 bytes per trie node (a Python object with a dict); counted, not measured
        def nodes(trie: SuffixTrie) -> int:
            stack, n = [trie.root], 0
            while stack:
                node = stack.pop()
                n += 1
                stack.extend(node.children.values())
            return n
        return 200 * (nodes(self.history) + nodes(self.request))

    def describe(self) -> str:
        p = self.params
        return (f"SuffixDecoding: suffix tries (depth {p.max_depth}) over this request and earlier outputs, "
                f"up to {p.max_nodes} nodes (factor {p.factor} x match, path probability >= {p.min_prob})")
