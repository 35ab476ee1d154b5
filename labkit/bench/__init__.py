"""`labkit bench`: Spec-Bench questions, every method against the autoregressive baseline in one process.

Questions: Spec-Bench (Xia et al., "Unlocking Efficiency in Large Language Model Inference: A Comprehensive
Survey of Speculative Decoding", 2024), 480 questions, Apache-2.0, copied into labkit/data/spec_bench with
its license. Categories: mt_bench (the 80 MT-Bench questions), translation, summarization, qa,
math_reasoning, rag. The first turn of each question is used.

    labkit bench --methods autoregressive,prompt_lookup,token_recycling --n 10 --out runs/fp32.jsonl
    labkit bench --shard 0/4 --out runs/s0.jsonl ...   # four independent shards (alike machines) ...
    labkit bench merge runs/s*.jsonl --out runs/all.jsonl             # ... merged into one file and report
    labkit bench memory --methods token_recycling --tokens 2000       # method state and RSS growth

Per question, in one process and interleaved (the order rotates question by question, so drift in machine
speed hits every method alike): `model.generate(do_sample=False)`, the autoregressive baseline through the
labkit engine, every requested method, and (with --trace-overhead) the same methods again with full tracing
(per-node detail + a JSON-lines trace written). Timed regions are bracketed by device synchronisation.

Output: one JSON line per (question, method) with Spec-Bench's field names (`question_id`, `category`,
`model_id`, `choices: [{turns, new_tokens, wall_time, accept_lengths, decoding_steps}]`) plus labkit's own
(`labkit: {...}`); a line is flushed as soon as it is measured, so an interrupted run resumes where it stopped
(lines already in --out are skipped). A sidecar `<out>.meta.jsonl` records each invocation (machine, load,
latency curve, method state sizes). The report (`<out>.md`, `<out>.html` with plotly.js inlined, and
per-method Spec-Bench files under `<out>.spec_bench/`) is computed by `summarize` — one function for every
method, the baseline and `model.generate` alike.

Modules: questions (the Spec-Bench data), measure (one question with one method; the interleaved harness
that this command and the app's Bench tab share), records (files and the one metrics function), report
(markdown / HTML), memory (`labkit bench memory`), sparsity (`labkit bench --sparsity`), cli (the command).

Definitions (the report repeats them):
- tokens/s = the sum of new tokens / the sum of wall times (prefill included) over the questions;
- speedup = a method's tokens/s / the autoregressive baseline's tokens/s (same run, same process, same
  questions); "vs generate" divides by `model.generate`'s instead;
- mean acceptance length = tokens committed per target forward in decode rounds (Spec-Bench's accept length);
- efficiency = measured decode-phase speedup / ideal speedup, ideal = (decode tokens / the latency model's
  time for the verify passes actually run) x t(plain forward); 1.0 = no per-round overhead beyond the forward.
"""
from __future__ import annotations

from .questions import (  # noqa: F401
    CATEGORIES,
    MT_BENCH,
    BASELINE,
    GENERATE,
    GENERATE_PLD,
    PLD_TOKENS,
    TRACE_SUFFIX,
    load_questions,
    select,
    shard,
)
from .measure import (  # noqa: F401
    Spec,
    parse_specs,
    state_bytes,
    run_method,
    run_generate,
    warm_up,
    interleaved,
)
from .records import (  # noqa: F401
    read_records,
    read_meta,
    merge,
    summarize,
    identical_rate,
    table,
)
from .report import (  # noqa: F401
    latency_curves,
    markdown,
    html,
    write_report,
)
from .memory import (  # noqa: F401
    rss_bytes,
    kv_bytes,
    memory_check,
)
from .cli import (  # noqa: F401
    add_arguments,
    main,
    run,
)

__all__ = [
    'run',
    'CATEGORIES',
    'MT_BENCH',
    'BASELINE',
    'GENERATE',
    'GENERATE_PLD',
    'PLD_TOKENS',
    'TRACE_SUFFIX',
    'load_questions',
    'select',
    'shard',
    'Spec',
    'parse_specs',
    'state_bytes',
    'run_method',
    'run_generate',
    'warm_up',
    'interleaved',
    'read_records',
    'read_meta',
    'merge',
    'summarize',
    'identical_rate',
    'table',
    'latency_curves',
    'markdown',
    'html',
    'write_report',
    'rss_bytes',
    'kv_bytes',
    'memory_check',
    'add_arguments',
    'main',
]
