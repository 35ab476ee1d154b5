"""Sparsity frames: one trace event per decoder Step, saying what every recorded layer and head attended to,
which committed KV positions the policy let it read, and what that cost in fidelity.

Plain values only (ints, floats, tuples), so a frame round-trips through JSON lines like a Step. Importing
this module registers the event type "sparsity" with `labkit.trace`.

Positions are token positions of the sequence: 0 .. kv_len-1 are the committed KV entries the round read
(the cache before the round), kv_len .. are the round's own tokens (the root and the accepted draft tokens
of a speculative round), which every policy lets a query see.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from .. import trace

EVENT = "sparsity"

# residency codes
NEVER_SEEN, EVICTED, KEPT = -1, 0, 1


@dataclass(frozen=True)
class AttnRow:
    """The attention one query row paid, over positions 0..query: the whole row when it is short, else the
    top-k positions (ascending position order) with their weights and the mass they cover."""

    full: tuple[float, ...] = ()
    top: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()
    mass: float = 1.0  # attention mass held by `full` (1.0 up to rounding) or by the top-k


@dataclass(frozen=True)
class HeadFrame:
    head: int
    kept: tuple[tuple[int, int], ...]  # half-open ranges [a, b) of committed positions (< kv_len) this head read
    n_kept: int  # KV entries of the committed context it read (dense: kv_len)
    recall: tuple[float, ...]  # per query row: share of the dense attention mass on what it could read
    rows: tuple[AttnRow, ...]  # per query row: the attention it actually paid (under the policy)


@dataclass(frozen=True)
class LayerFrame:
    layer: int
    heads: tuple[HeadFrame, ...]


@dataclass(frozen=True)
class SparsityFrame:
    """What the policy did in one Step (`step` = Step.index). `queries` are the positions of the recorded query
    rows: the prefill's last prompt token, or a decode round's root followed by its accepted draft tokens."""

    step: int
    kind: str  # "prefill" | "decode" (the prefill always runs dense: policies act on decoding)
    policy: str
    kv_len: int  # committed KV entries before the round (per layer and head, dense)
    queries: tuple[int, ...]
    layers: tuple[LayerFrame, ...]  # the recorded layers and heads
    kv_kept: tuple[tuple[int, ...], ...] = ()  # [layer][head] entries read, every layer and head of the model
    recall: float | None = None  # mean over recorded layers, heads and rows (None: nothing recorded)
    kl: float | None = None  # mean over the rows of KL(dense || policy) of the next-token distribution
    top1: float | None = None  # share of rows whose argmax equals dense decoding's on the same prefix
    state: dict = field(default_factory=dict)  # what the policy did this round (JSON-plain)

    @property
    def kv_kept_total(self) -> int:
        return sum(sum(r) for r in self.kv_kept)

    @property
    def kv_dense_total(self) -> int:
        return self.kv_len * sum(len(r) for r in self.kv_kept)

    @property
    def kv_ratio(self) -> float | None:
        """KV entries read / dense entries (None for the prefill, which reads no committed context)."""
        dense = self.kv_dense_total
        return self.kv_kept_total / dense if dense else None

    def head(self, layer: int, head: int) -> HeadFrame | None:
        for lf in self.layers:
            if lf.layer == layer:
                for hf in lf.heads:
                    if hf.head == head:
                        return hf
        return None


trace.register_event(EVENT, SparsityFrame)


# ---- kept sets as ranges ---------------------------------------------------------------------------

def to_ranges(mask: torch.Tensor | Sequence[bool]) -> tuple[tuple[int, int], ...]:
    """Bool vector -> half-open ranges of its True runs."""
    m = torch.as_tensor(mask, dtype=torch.bool).flatten().to("cpu")
    if m.numel() == 0:
        return ()
    d = torch.diff(m.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8), append=torch.zeros(1, dtype=torch.int8))
    starts = torch.nonzero(d == 1).flatten().tolist()
    ends = torch.nonzero(d == -1).flatten().tolist()
    return tuple(zip(starts, ends))


def from_ranges(ranges: Iterable[Sequence[int]], n: int) -> torch.Tensor:
    """Ranges -> bool vector of length n."""
    m = torch.zeros(n, dtype=torch.bool)
    for a, b in ranges:
        m[a:min(b, n)] = True
    return m


# ---- residency: decode step x position --------------------------------------------------------------

@dataclass(frozen=True)
class Residency:
    """Cache residency over a run: `cells[i][p]` for frame `steps[i]` and position p is KEPT (1), EVICTED (0) or
    NEVER_SEEN (-1: not in the cache yet). Aggregated over several heads, a seen cell is the share of those heads
    that kept the position (0..1). `layer`/`head` say what was aggregated (None: all recorded)."""

    steps: tuple[int, ...]
    width: int
    cells: tuple[tuple[float, ...], ...]
    layer: int | None = None
    head: int | None = None

    def counts(self) -> dict[str, int]:
        flat = [c for row in self.cells for c in row]
        return {"kept": sum(1 for c in flat if c == KEPT), "evicted": sum(1 for c in flat if c == EVICTED),
                "never_seen": sum(1 for c in flat if c == NEVER_SEEN)}


def residency(frames: Iterable[SparsityFrame], layer: int | None = None, head: int | None = None) -> Residency:
    """The residency record of a run's frames, for one layer/head or aggregated over the recorded ones."""
    frames = [f for f in frames if isinstance(f, SparsityFrame)]
    width = max((f.kv_len for f in frames), default=0)
    cells = []
    for f in frames:
        masks = [from_ranges(hf.kept, f.kv_len).float() for lf in f.layers if layer is None or lf.layer == layer
                 for hf in lf.heads if head is None or hf.head == head]
        row = torch.full((width,), float(NEVER_SEEN))
        if masks and f.kv_len:
            row[:f.kv_len] = torch.stack(masks).mean(0)
        elif f.kv_len:
            raise ValueError(f"frame {f.step} recorded no layer {layer} head {head}")
        cells.append(tuple(row.tolist()))
    return Residency(steps=tuple(f.step for f in frames), width=width, cells=tuple(cells), layer=layer, head=head)


def frames_of(events: Iterable) -> list[SparsityFrame]:
    return [e for e in events if isinstance(e, SparsityFrame)]
