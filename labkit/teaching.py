"""Teaching simulations over toy distributions: the rejection rule and k candidates per position, run through
labkit's own acceptance rules, and the chi-square test that says whether an output is still p. Computation
only; `labkit.views.rejection_demo` and `siblings_demo` draw them."""
from __future__ import annotations

from typing import Sequence

TOY_TOKENS = ("the", "a", "cat", "dog", "sat", "ran")
TOY_P = (0.35, 0.05, 0.25, 0.05, 0.2, 0.1)
TOY_Q = (0.1, 0.3, 0.1, 0.3, 0.1, 0.1)

SIBLING_RULES = {"iid": "k i.i.d. siblings, recursive rejection (SpecInfer)",
                 "without_replacement": "k siblings without replacement, q updated (RSD)",
                 "kseq": "k i.i.d. drafts, K-SEQ (SpecTr)",
                 "no_q_update": "without replacement, q NOT updated (bug)"}
SIBLING_SHORT = {"iid": "i.i.d. (SpecInfer)", "without_replacement": "without replacement (RSD)",
                 "kseq": "K-SEQ (SpecTr)", "no_q_update": "bug: q not updated"}


def simulate_rejection(p: Sequence[float], q: Sequence[float], n: int = 20000, *, seed: int = 0,
                       rule: str = "correct") -> list[int]:
    """Counts of the token emitted by one round of draft-and-verify over a toy vocabulary: draw x ~ q, run the
    acceptance rule, emit x or the replacement token. `rule="correct"` is labkit's own
    `accept.rejection_tree` (accept with min(1, p/q), else sample norm(max(0, p - q))); `rule="resample_p"`
    is a plausible-looking bug (on rejection sample from p itself)."""
    import torch

    from .accept import rejection_tree
    pt = torch.tensor(list(p), dtype=torch.float64)
    qt = torch.tensor(list(q), dtype=torch.float64)
    pt, qt = pt / pt.sum(), qt / qt.sum()
    g = torch.Generator().manual_seed(seed)
    counts = [0] * len(pt)
    P = torch.stack([pt, pt])  # verify rows: root (decides the child), node
    Q = qt[None]
    drafts = torch.multinomial(qt.expand(n, -1), 1, replacement=True, generator=g)[:, 0].tolist()
    for x in drafts:
        if rule == "correct":
            out = rejection_tree([-1], [x], P, Q, g)
            tok = x if out.path else out.bonus
        elif rule == "resample_p":
            u = float(torch.rand((), generator=g, dtype=torch.float64))
            tok = x if u < float(pt[x] / qt[x]) else int(torch.multinomial(pt, 1, generator=g))
        else:
            raise ValueError(f"unknown rule {rule!r}: use 'correct' or 'resample_p'")
        counts[tok] += 1
    return counts


def chi_square(counts: Sequence[int], p: Sequence[float]) -> tuple[float, float]:
    """Pearson's chi-square statistic of `counts` against probabilities `p`, and its p-value: labkit's one
    goodness-of-fit test (the notebooks' figures and the statistical tests of every sampling rule). Cells whose
    expected count is under 5 are pooled into one, so the chi-square approximation holds for long-tailed p.
    A count on a token `p` gives (numerically) zero probability is an error: no lossless rule may produce one."""
    import torch

    total = sum(counts)
    s = sum(p)
    if any(c > 0 and pi <= 1e-12 * s for c, pi in zip(counts, p)):
        raise ValueError("a token with zero probability under p was counted")
    cells = [(c, total * pi / s) for c, pi in zip(counts, p) if pi > 1e-12 * s]
    big = [(c, e) for c, e in cells if e >= 5]
    small = [(c, e) for c, e in cells if e < 5]
    if small:
        big.append((sum(c for c, _ in small), sum(e for _, e in small)))
    stat = sum((c - e) ** 2 / e for c, e in big if e > 0)
    dof = max(1, len(big) - 1)
    pval = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))
    return stat, pval


def simulate_siblings(p: Sequence[float], q: Sequence[float], k: int, n: int = 4000, *,
                      rule: str = "without_replacement", seed: int = 0) -> dict:
    """One position with k draft candidates over a toy vocabulary, n times: draw the candidates from q, run the
    rule, emit the accepted candidate or the replacement token. Rules (labkit's own functions):
    `"iid"`: k draws with replacement, `accept.rejection_tree` (SpecInfer's recursive rejection, q fixed);
    `"without_replacement"`: `drafter.draw_children` (Gumbel-top-k), `rejection_tree(without_replacement=True)`
    (RSD: after each rejection q loses the rejected token); `"kseq"`: k draws with replacement, `accept.kseq`
    (SpecTr); `"no_q_update"`: a plausible bug (drawn without replacement, verified as if i.i.d.).
    Returns {"counts": emitted tokens, "accepted": share of rounds that accepted a candidate,
    "distinct": mean number of distinct candidates per round}."""
    import torch

    from .accept import kseq, kseq_rho, rejection_tree
    from .drafter import draw_children

    if rule not in SIBLING_RULES:
        raise ValueError(f"unknown rule {rule!r}: use one of {', '.join(SIBLING_RULES)}")
    if k < 1:
        raise ValueError("k must be at least 1")
    pt = torch.tensor(list(p), dtype=torch.float64)
    qt = torch.tensor(list(q), dtype=torch.float64)
    pt, qt = pt / pt.sum(), qt / qt.sum()
    g = torch.Generator().manual_seed(seed)
    rho = kseq_rho(pt, qt, k) if rule == "kseq" else 1.0
    P, Q = pt.expand(k + 1, -1), qt.expand(k, -1)
    counts, accepted, distinct = [0] * len(pt), 0, 0
    for _ in range(n):
        if rule in ("iid", "kseq"):
            draws = torch.multinomial(qt, k, replacement=True, generator=g).tolist()
        else:
            draws = draw_children(qt, k, False, g)
        distinct += len(set(draws))
        if rule == "kseq":
            hit, _, res = kseq(pt, qt, draws, g, rho=rho)
            tok = draws[hit] if hit is not None else int(torch.multinomial(res, 1, generator=g))
            accepted += hit is not None
        else:
            m = len(draws)
            out = rejection_tree([-1] * m, draws, P[: m + 1], Q[:m], g,
                                   without_replacement=(rule == "without_replacement"))
            tok = draws[out.path[0]] if out.path else out.bonus
            accepted += bool(out.path)
        counts[tok] += 1
    return {"counts": counts, "accepted": accepted / n, "distinct": distinct / n}
