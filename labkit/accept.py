"""Acceptance rules as pure functions over verified trees.

Notation, fixed for all of labkit:
- p: the TARGET model's distribution (after temperature / top-k / top-p), the one we must preserve.
- q: the DRAFT distribution a candidate token x was drawn from. Draft sources without a distribution
  (Token Recycling, prompt lookup, ...) are point masses: q = one-hot(x).
- Verify positions: 0 is the root, i + 1 is node i (see `labkit.tree`). `p[j]` is the target's
  distribution for the children of verify position j; `q[i]` is the draft distribution node i was drawn from.

Rules:
- `greedy_tree`: longest path whose every token equals the target argmax; the bonus is the argmax after it.
- `rejection_tree`: standard speculative sampling generalised to trees by recursive rejection over
  siblings (SpecInfer; RSD when siblings were drawn without replacement). At a node with target
  distribution p and candidates x_1..x_m: accept x_j with probability min(1, p(x_j) / q(x_j)); on rejection
  set p <- norm(max(0, p - q)) (and, without replacement, q <- q with x_j removed, renormalised). If every
  candidate is rejected the bonus token is drawn from the final residual p. With point-mass drafts this is
  sampling without replacement from p, so any deterministic tree stays lossless.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import tree
from .trace import ACCEPTED, BONUS_ARGMAX, BONUS_RESIDUAL, BONUS_SAMPLED, NOT_REACHED, REJECTED


@dataclass
class Decision:
    status: str = NOT_REACHED
    reason: str = ""
    accept_prob: float | None = None
    draw: float | None = None


@dataclass
class Outcome:
    path: list[int]  # accepted node indices, root to leaf
    bonus: int
    bonus_how: str
    decisions: list[Decision]


def _mark_unreached(decisions: list[Decision], parents: Sequence[int]) -> None:
    for i, p in enumerate(parents):
        d = decisions[i]
        if d.status == NOT_REACHED:
            parent_ok = p < 0 or decisions[p].status == ACCEPTED
            d.reason = "a sibling was accepted first" if parent_ok else "parent not accepted"


def greedy_tree(parents: Sequence[int], tokens: Sequence[int], target_argmax: Sequence[int],
                label: Callable[[int], str] = str) -> Outcome:
    """`target_argmax[j]` is the target's argmax at verify position j (length n + 1)."""
    kids = tree.children(parents)
    decisions = [Decision() for _ in parents]
    path: list[int] = []
    pos = 0
    while True:
        want = target_argmax[pos]
        nxt = None
        for c in kids[pos]:
            if nxt is None and tokens[c] == want:
                decisions[c] = Decision(ACCEPTED, "matches the target argmax")
                nxt = c
            elif nxt is None:
                decisions[c] = Decision(REJECTED, f"argmax was {label(want)!r}")
        if nxt is None:
            _mark_unreached(decisions, parents)
            return Outcome(path, int(want), BONUS_ARGMAX, decisions)
        path.append(nxt)
        pos = nxt + 1


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)); falls back to p if the residual vanishes numerically (p == q: never rejected)."""
    r = torch.clamp(p - q, min=0)
    s = r.sum()
    return r / s if s > 1e-12 else p


def rejection_tree(parents: Sequence[int], tokens: Sequence[int], p: torch.Tensor, q: torch.Tensor | None,
                   generator: torch.Generator, *, without_replacement: bool = False) -> Outcome:
    """Recursive rejection sampling down a tree. `p` is [n+1, V]; `q` is [n, V] (row i: the distribution
    node i was drawn from; siblings share it) or None for point-mass drafts."""
    kids = tree.children(parents)
    decisions = [Decision() for _ in parents]
    path: list[int] = []
    pos = 0
    while True:
        p_cur = p[pos].clone()
        q_cur = q[kids[pos][0]].clone() if (q is not None and kids[pos]) else None
        nxt = None
        for c in kids[pos]:
            x = tokens[c]
            qx = 1.0 if q_cur is None else float(q_cur[x])
            px = float(p_cur[x])
            ratio = px / qx if qx > 0 else 0.0
            u = float(torch.rand((), generator=generator, device=p.device))
            a = min(1.0, ratio)
            if u < ratio:
                decisions[c] = Decision(ACCEPTED, f"u={u:.2f} < p/q={ratio:.2f}", a, u)
                nxt = c
                break
            decisions[c] = Decision(REJECTED, f"u={u:.2f} >= p/q={ratio:.2f}", a, u)
            if q_cur is None:
                p_cur[x] = 0.0
                s = p_cur.sum()
                p_cur = p_cur / s if s > 1e-12 else p[pos]
            else:
                p_cur = residual(p_cur, q_cur)
                if without_replacement:
                    q_cur[x] = 0.0
                    s = q_cur.sum()
                    q_cur = q_cur / s if s > 1e-12 else q_cur
        if nxt is None:
            _mark_unreached(decisions, parents)
            how = BONUS_RESIDUAL if kids[pos] else BONUS_SAMPLED
            bonus = int(torch.multinomial(p_cur, 1, generator=generator))
            return Outcome(path, bonus, how, decisions)
        path.append(nxt)
        pos = nxt + 1


def sample(p: torch.Tensor, generator: torch.Generator) -> int:
    return int(torch.multinomial(p, 1, generator=generator))


# ---- SpecTr: k-sequential draft selection (Sun et al. 2023) -----------------------------------------
#
# Sun, Suresh, Ro, Beirami, Jain, Yu, "SpecTr: Fast Speculative Decoding via Optimal Transport", NeurIPS 2023
# (arXiv:2310.15141), Algorithm "K-SEQ". Given k i.i.d. draws x_1..x_k ~ q and a division factor rho in [1, k]:
#   beta(rho) = sum_x min(q(x), p(x) / rho)           (the chance one draw passes)
#   try x_1, x_2, ... in draw order, accepting x_i with probability min(1, p(x_i) / (rho q(x_i)));
#   if all k fail, sample from p_res(x) = (p(x) - min(q(x), p(x)/rho) (1 - (1 - beta)^k) / beta) / (1 - beta)^k.
# The output is exactly p whenever p_res >= 0, i.e. when (1 - (1 - beta)^k) / beta <= rho; rho* is the smallest
# such rho (found by bisection). k = 1 gives rho* = 1: standard speculative sampling.


def kseq_beta(p: torch.Tensor, q: torch.Tensor, rho: float) -> float:
    return float(torch.minimum(q, p / rho).sum())


def _kseq_gain(beta: float, k: int) -> float:
    """(1 - (1 - beta)^k) / beta: the factor by which k tries inflate one try's accepted mass (-> k as beta -> 0)."""
    return k if beta <= 1e-12 else (1.0 - (1.0 - beta) ** k) / beta


def kseq_rho(p: torch.Tensor, q: torch.Tensor, k: int, rounds: int = 3, grid: int = 32) -> float:
    """The smallest division factor rho in [1, k] for which the K-SEQ residual is non-negative, to within
    (k - 1) / grid^rounds (vectorised grid refinement; the returned rho is always on the valid side)."""
    if k <= 1 or _kseq_gain(kseq_beta(p, q, 1.0), k) <= 1.0:
        return 1.0
    lo, hi = 1.0, float(k)
    pf, qf = p.double(), q.double()
    for _ in range(rounds):
        rho = torch.linspace(lo, hi, grid + 1, dtype=torch.float64, device=p.device)
        beta = torch.minimum(qf[None], pf[None] / rho[:, None]).sum(-1)
        gain = torch.where(beta > 1e-12, (1.0 - (1.0 - beta) ** k) / beta.clamp_min(1e-12), torch.full_like(beta, k))
        ok = (gain <= rho).tolist()
        ok[-1] = True  # hi is valid by construction
        j = ok.index(True)
        lo, hi = (float(rho[j - 1]) if j else lo), float(rho[j])
    return hi


def kseq_accept_prob(p: torch.Tensor, q: torch.Tensor, k: int, rho: float | None = None) -> float:
    """Probability that one of k i.i.d. draws is accepted: 1 - (1 - beta(rho))^k."""
    rho = kseq_rho(p, q, k) if rho is None else rho
    return 1.0 - (1.0 - kseq_beta(p, q, rho)) ** k


def kseq_residual(p: torch.Tensor, q: torch.Tensor, k: int, rho: float) -> torch.Tensor:
    """The distribution to sample from when all k draws were rejected."""
    beta = kseq_beta(p, q, rho)
    r = torch.clamp(p - torch.minimum(q, p / rho) * _kseq_gain(beta, k), min=0)
    s = r.sum()
    return r / s if s > 1e-12 else p


def kseq(p: torch.Tensor, q: torch.Tensor, draws: Sequence[int], generator: torch.Generator,
         rho: float | None = None) -> tuple[int | None, list[Decision], torch.Tensor | None]:
    """K-SEQ over `draws` (i.i.d. from q, in draw order). Returns (index of the accepted draw or None, one
    Decision per draw, the residual to sample from when none was accepted)."""
    k = len(draws)
    rho = kseq_rho(p, q, k) if rho is None else rho
    decisions = [Decision(NOT_REACHED, "an earlier draft was accepted") for _ in draws]
    for i, x in enumerate(draws):
        qx, px = float(q[x]), float(p[x])
        ratio = px / (rho * qx) if qx > 0 else 0.0
        u = float(torch.rand((), generator=generator, device=p.device))
        a = min(1.0, ratio)
        if u < ratio:
            decisions[i] = Decision(ACCEPTED, f"u={u:.2f} < p/(rho q)={ratio:.2f} (rho={rho:.2f}, k={k})", a, u)
            return i, decisions, None
        decisions[i] = Decision(REJECTED, f"u={u:.2f} >= p/(rho q)={ratio:.2f} (rho={rho:.2f}, k={k})", a, u)
    return None, decisions, kseq_residual(p, q, k, rho)


def spectr_tree(parents: Sequence[int], tokens: Sequence[int], k: int, p: torch.Tensor, q: torch.Tensor,
                generator: torch.Generator) -> Outcome:
    """SpecTr verification of k draft sequences laid out level-major: node (d - 1) * k + s is sequence s's token
    at depth d (parent: the same sequence's node one level up). The engine may cut the tail off, so a level can
    hold only its first few sequences (a data-independent subset: still i.i.d. draws).

    At each depth, K-SEQ runs over the draws of the sequences that agree with every token accepted so far
    (conditionally i.i.d. from q(. | accepted prefix)). The accepted path is the node chain of the last sequence
    that survived. Every draw holding an accepted token on a sequence still in the game shows as accepted (the
    same token: that sequence's children can be tested too), and the path goes through the last sequence."""
    n = len(tokens)
    decisions = [Decision() for _ in range(n)]
    alive = list(range(k))
    chosen: list[int] = []  # the accepted draw's node index per depth
    row = 0
    d = 0
    while True:
        nodes = [d * k + s for s in alive if d * k + s < n]
        if not nodes:
            bonus = int(torch.multinomial(p[row], 1, generator=generator))
            how = BONUS_SAMPLED
            break
        hit, decs, res = kseq(p[row], q[nodes[0]], [tokens[i] for i in nodes], generator)
        for i, dec in zip(nodes, decs):
            decisions[i] = dec
        if hit is None:
            bonus = int(torch.multinomial(res, 1, generator=generator))
            how = BONUS_RESIDUAL
            break
        x = tokens[nodes[hit]]
        chosen.append(nodes[hit])
        alive = [s for s in alive if d * k + s < n and tokens[d * k + s] == x]
        row = nodes[hit] + 1
        d += 1
    last = chosen[-1] % k if chosen else 0
    path = [j * k + last for j in range(len(chosen))]
    for j, (c, node) in enumerate(zip(chosen, path)):
        if c != node:  # the same token was accepted from another sequence: the path carries its decision
            decisions[node] = decisions[c]
            decisions[c] = Decision(ACCEPTED, f"{decisions[c].reason}; the path continues through sequence "
                                              f"{last} (same token)", decisions[c].accept_prob, decisions[c].draw)
    # an untested draw holding the accepted token keeps its sequence in the game (its children may be tested):
    # it shows as accepted, not as "not reached"
    for s in range(k):
        for j, c in enumerate(chosen):
            i = j * k + s
            if i >= n or tokens[i] != tokens[c]:
                break
            if decisions[i].status == NOT_REACHED:
                decisions[i] = Decision(ACCEPTED, f"not tested itself: the same token as the accepted draw (node {c}), "
                                                  f"so sequence {s} stays in the game")
    _mark_unreached(decisions, parents)
    return Outcome(path, bonus, how, decisions)


# ---- lookahead: one draft distribution per node ------------------------------------------------------
#
# Fu et al., "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding", ICML 2024: the
# n-gram pool and the Jacobi window propose nodes whose draft distributions differ from node to node.

def rejection_per_node(parents, tokens, p: torch.Tensor, q: torch.Tensor, generator: torch.Generator) -> Outcome:
    """Recursive rejection sampling down a tree where every node has its own draft distribution `q[i]`
    (one-hot for deterministic drafts). Children are tried in order: accept x with probability
    min(1, p(x)/q_i(x)), else p <- norm(max(0, p - q_i)); if all fail, the bonus is drawn from the last p.
    Exact when each node is an independent draw from its q_i given everything tried before it."""
    kids = tree.children(parents)
    decisions = [Decision() for _ in parents]
    path: list[int] = []
    pos = 0
    while True:
        p_cur = p[pos]
        nxt = None
        for c in kids[pos]:
            x = tokens[c]
            qx, px = float(q[c, x]), float(p_cur[x])
            ratio = px / qx if qx > 0 else 0.0
            u = float(torch.rand((), generator=generator, device=p.device))
            if u < ratio:
                decisions[c] = Decision(ACCEPTED, f"u={u:.2f} < p/q={ratio:.2f}", min(1.0, ratio), u)
                nxt = c
                break
            decisions[c] = Decision(REJECTED, f"u={u:.2f} >= p/q={ratio:.2f}", min(1.0, ratio), u)
            p_cur = residual(p_cur, q[c].to(p_cur.device))
        if nxt is None:
            _mark_unreached(decisions, parents)
            bonus = int(torch.multinomial(p_cur, 1, generator=generator))
            return Outcome(path, bonus, BONUS_RESIDUAL if kids[pos] else BONUS_SAMPLED, decisions)
        path.append(nxt)
        pos = nxt + 1


# ---- lossy: typical acceptance (Medusa) -------------------------------------------------------------
#
# Cai et al., "Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding Heads", ICML 2024
# (arXiv:2401.10774), Section 2.3.1. A candidate x is accepted when p(x) > min(epsilon, alpha * exp(-H(p)))
# (H: entropy of the target's distribution at that position); the longest accepted prefix over all tree paths
# wins (ties: the likelier prefix), and the next token is sampled from p after it. NOT distribution-preserving.


def typical_threshold(p: torch.Tensor, epsilon: float, alpha: float) -> torch.Tensor:
    """min(epsilon, alpha * exp(-H(p))) per row of p [..., V]."""
    logp = torch.log(p.clamp_min(1e-30))
    entropy = -(p * logp).sum(-1)
    return torch.clamp(alpha * torch.exp(-entropy), max=epsilon)


def typical_tree(parents: Sequence[int], tokens: Sequence[int], p: torch.Tensor, generator: torch.Generator, *,
                 epsilon: float = 0.09, alpha: float = 0.3) -> Outcome:
    """Medusa's typical acceptance over a tree. `p` is [n+1, V] (row 0 the root)."""
    n = len(tokens)
    if n == 0:
        return Outcome([], int(torch.multinomial(p[0], 1, generator=generator)), BONUS_SAMPLED, [])
    rows = torch.tensor([q + 1 for q in parents], device=p.device)
    tok = torch.tensor(list(tokens), device=p.device)
    px = p[rows].gather(-1, tok[:, None])[:, 0]
    tau = typical_threshold(p, epsilon, alpha)[rows]
    ok = (px > tau).tolist()
    px_l, tau_l = px.tolist(), tau.tolist()
    best: list[int] = []
    best_key = (0, 0.0)
    for leaf in tree.leaves(parents):
        prefix: list[int] = []
        for i in tree.path_to(parents, leaf):
            if not ok[i]:
                break
            prefix.append(i)
        key = (len(prefix), sum(math.log(max(px_l[i], 1e-30)) for i in prefix))
        if key[0] > best_key[0] or (key[0] == best_key[0] and key[0] > 0 and key[1] > best_key[1]):
            best, best_key = prefix, key
    on_path = set(best)
    decisions = []
    for i in range(n):
        test = f"p={px_l[i]:.3f} {'>' if ok[i] else '<='} tau={tau_l[i]:.3f}"
        if i in on_path:
            decisions.append(Decision(ACCEPTED, f"{test} (typical)"))
        elif parents[i] >= 0 and not ok[parents[i]]:
            decisions.append(Decision(NOT_REACHED, "parent not accepted"))
        elif ok[i]:
            decisions.append(Decision(NOT_REACHED, f"{test}, but a longer or likelier path won"))
        else:
            decisions.append(Decision(REJECTED, test))
    row = best[-1] + 1 if best else 0
    bonus = int(torch.multinomial(p[row], 1, generator=generator))
    return Outcome(best, bonus, BONUS_SAMPLED, decisions)


def typical_tv_bound(p_root: torch.Tensor, epsilon: float, alpha: float) -> float:
    """An upper bound on TV(output of the first new token, p) for typical acceptance with deterministic
    candidates: an accepted first token x has p(x) > tau, so TV <= 1 - tau."""
    return 1.0 - float(typical_threshold(p_root, epsilon, alpha))


# ---- lossy: LANTERN relaxed acceptance ---------------------------------------------------------------
#
# Jang et al., "LANTERN: Accelerating Visual Autoregressive Models with Relaxed Speculative Decoding", ICLR 2025
# (arXiv:2410.03355). Tokens close in latent (embedding) space are treated as interchangeable: for a drafted x,
# its latent proximity set A(x) is the longest prefix of x's k nearest neighbours whose total target mass stays
# <= delta; x is accepted with probability min(1, (p(x) + p(A(x))) / q(x)). On rejection the bonus comes from
# norm(max(0, p - q)) as in standard speculative sampling. Each accepted x borrows at most delta of mass.
# Output bound (derived here): with e(x) = min(q, p + p(A(x))) - min(q, p) >= 0 and E = sum_x e(x), the output
# pi = p + e - E r (r the residual), so TV(pi, p) <= E <= sum_x min(max(0, q - p), p(A(x))).


def lantern_mass(p: torch.Tensor, neighbours: torch.Tensor, delta: float) -> torch.Tensor:
    """p(A(x)) for each row of `neighbours` [m, k] (nearest first): the largest neighbour-prefix mass <= delta."""
    cum = p[neighbours].cumsum(-1)
    return torch.where(cum <= delta + 1e-12, cum, torch.zeros_like(cum)).amax(-1)


def lantern_chain(tokens: Sequence[int], p: torch.Tensor, q: torch.Tensor, neighbours: torch.Tensor, delta: float,
                  generator: torch.Generator) -> Outcome:
    """LANTERN's relaxed speculative sampling down a chain: `p` [n+1, V], `q` [n, V], `neighbours` [n, k]."""
    n = len(tokens)
    decisions = [Decision() for _ in range(n)]
    path: list[int] = []
    for i, x in enumerate(tokens):
        m = float(lantern_mass(p[i], neighbours[i][None], delta)[0])
        px, qx = float(p[i, x]), float(q[i, x])
        ratio = (px + m) / qx if qx > 0 else 0.0
        u = float(torch.rand((), generator=generator, device=p.device))
        why = f"(p={px:.2f} + neighbours {m:.2f}) / q={qx:.2f} = {ratio:.2f}"
        if u < ratio:
            decisions[i] = Decision(ACCEPTED, f"u={u:.2f} < {why}" + (" (relaxed)" if px / max(qx, 1e-30) <= u else ""),
                                    min(1.0, ratio), u)
            path.append(i)
            continue
        decisions[i] = Decision(REJECTED, f"u={u:.2f} >= {why}", min(1.0, ratio), u)
        _mark_unreached(decisions, list(range(-1, n - 1)))
        return Outcome(path, int(torch.multinomial(residual(p[i], q[i]), 1, generator=generator)), BONUS_RESIDUAL,
                       decisions)
    return Outcome(path, int(torch.multinomial(p[n], 1, generator=generator)), BONUS_SAMPLED, decisions)


def lantern_output(p: torch.Tensor, q: torch.Tensor, mass: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Exact output distribution of one LANTERN position (draft x ~ q, relaxed acceptance, residual resample)
    given `mass[x]` = p(A(x)) for every token, and the bound E on its TV distance from p."""
    a = torch.minimum(q, p + mass)
    a0 = torch.minimum(q, p)
    r = residual(p, q)
    out = a + (1.0 - float(a.sum())) * r
    return out, float((a - a0).sum())


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    """Total-variation distance between two distributions."""
    return 0.5 * float((a - b).abs().sum())
