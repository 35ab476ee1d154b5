"""The Spec-Bench questions shipped with labkit (Apache-2.0, labkit/data/spec_bench): loading, choosing, sharding."""
from __future__ import annotations

import json
from importlib import resources
from typing import Sequence




CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
MT_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
BASELINE = "autoregressive"
GENERATE = "generate"  # stock model.generate on the stock, untransformed model: what a user would run instead
GENERATE_PLD = "generate+pld"  # the peer: transformers' own prompt lookup, generate(prompt_lookup_num_tokens=10)
PLD_TOKENS = 10
TRACE_SUFFIX = "+trace"


def load_questions() -> list[dict]:
    path = resources.files("labkit").joinpath("data/spec_bench/question.jsonl")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            q["bench_category"] = "mt_bench" if q["category"] in MT_BENCH else q["category"]
            out.append(q)
    return out


def select(questions: list[dict], n: int, categories: Sequence[str] = CATEGORIES) -> list[dict]:
    """The first n questions of each category, in category order."""
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown category {unknown[0]!r}; Spec-Bench has {', '.join(CATEGORIES)}")
    out = []
    for c in categories:
        out.extend([q for q in questions if q["bench_category"] == c][:n])
    return out


def shard(questions: list[dict], spec: str | None) -> list[dict]:
    """`i/k`: every k-th question starting at i (0-based). Shards are disjoint and together cover the set."""
    if not spec:
        return questions
    try:
        i, k = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/k (e.g. 0/4), got {spec!r}") from None
    if not (k >= 1 and 0 <= i < k):
        raise ValueError(f"--shard {spec}: need 0 <= i < k")
    return questions[i::k]
