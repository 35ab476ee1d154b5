"""Views: one function per view, each taking Steps (or a trace / Run) and returning a plotly Figure.

    from labkit import views
    views.draft_tree(step)                 # one round's tree: accepted / rejected / not reached / bonus
    views.token_stream(run.steps)          # the text, every token coloured by where it came from
    views.tree_mask(step)                  # the verify pass's tree attention mask next to the tree
    views.kv_compaction(step)              # which KV-cache slots survive the commit
    views.acceptance_stats(run.steps)      # per depth, histogram, over time, where the time goes
    views.method_state(step, "token_recycling")   # what the method's own state did this round
    views.side_by_side(lab.compare([...], prompt))  # 2-4 methods aligned by output position
    views.latency_curve(lab.latency_curve())        # cost of one forward over n tokens on this device
    views.rejection_demo()                 # the rejection rule's output distribution vs p (and a wrong rule)
    views.siblings_demo()                  # k candidates per position: i.i.d. / without replacement / K-SEQ
    views.state_timeline(run, "alpha")     # a numeric Step.state entry (or dict of them) over the rounds
    views.bench_summary(bench.table(records))       # per Spec-Bench category: speedup and acceptance length

One module per view family: style (colours, token display, offline rendering), tree (a round's tree, its
decisions, the tree mask, the KV compaction), stream (the coloured text), stats (a run over its rounds),
method_state (each method's own state), compare (runs side by side, latency curve, bench summary), demos (toy
distributions), inside (per-layer predictions). Import from `labkit.views`; the modules are an implementation
detail.

Everything renders offline: `init_notebook()` picks renderers that never load plotly.js from a CDN, and
`to_html(fig)` inlines plotly.js. Every function skips events that are not Steps (e.g. sparsity frames), so
a whole trace's events can be passed as they are.
"""
from __future__ import annotations

from .style import (  # noqa: F401
    STATUS_COLORS,
    STATUS_SYMBOLS,
    STATUS_LABELS,
    PROVENANCE_COLORS,
    PROVENANCE_LABELS,
    METHOD_COLORS,
    PHASES,
    MAL_NOTE,
    show_token,
    WHITESPACE_KEY,
    steps_of,
    init_notebook,
    to_html,
)
from .tree import (  # noqa: F401
    tree_layout,
    showcase_step,
    DECISION_HEADERS,
    decisions,
    decisions_table,
    draft_tree,
    verify_start,
    tree_mask,
    kv_compaction,
)
from .stream import (  # noqa: F401
    token_stream,
    plain_text,
    token_stream_html,
)
from .stats import (  # noqa: F401
    rolling_mean,
    acceptance_stats,
    state_timeline,
    session_warmup,
)
from .method_state import (  # noqa: F401
    STATE_VIEWS,
    register_state_view,
    token_recycling_state,
    aded_state,
    lookahead_state,
    swift_state,
    generic_state,
    detect_method,
    method_state,
)
from .compare import (  # noqa: F401
    compare_outputs,
    side_by_side,
    latency_curve,
    bench_summary,
)
from .demos import (  # noqa: F401
    rejection_demo,
    siblings_demo,
)
from ..teaching import (  # noqa: F401  (computation, kept importable from here)
    simulate_rejection,
    chi_square,
    TOY_TOKENS,
    TOY_P,
    TOY_Q,
    SIBLING_RULES,
    SIBLING_SHORT,
    simulate_siblings,
)
from .inside import (  # noqa: F401
    prediction_strip,
)

__all__ = [
    'STATUS_COLORS',
    'STATUS_SYMBOLS',
    'STATUS_LABELS',
    'PROVENANCE_COLORS',
    'PROVENANCE_LABELS',
    'METHOD_COLORS',
    'PHASES',
    'MAL_NOTE',
    'show_token',
    'WHITESPACE_KEY',
    'steps_of',
    'init_notebook',
    'to_html',
    'tree_layout',
    'showcase_step',
    'DECISION_HEADERS',
    'decisions',
    'decisions_table',
    'draft_tree',
    'verify_start',
    'tree_mask',
    'kv_compaction',
    'token_stream',
    'plain_text',
    'token_stream_html',
    'rolling_mean',
    'acceptance_stats',
    'state_timeline',
    'session_warmup',
    'STATE_VIEWS',
    'register_state_view',
    'token_recycling_state',
    'aded_state',
    'lookahead_state',
    'swift_state',
    'generic_state',
    'detect_method',
    'method_state',
    'compare_outputs',
    'side_by_side',
    'latency_curve',
    'bench_summary',
    'simulate_rejection',
    'chi_square',
    'TOY_TOKENS',
    'TOY_P',
    'TOY_Q',
    'rejection_demo',
    'SIBLING_RULES',
    'SIBLING_SHORT',
    'simulate_siblings',
    'siblings_demo',
    'prediction_strip',
]
