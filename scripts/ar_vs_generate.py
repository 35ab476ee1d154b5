"""Is the instrumented autoregressive baseline as fast as `model.generate(do_sample=False)`? A direct check.

    python scripts/ar_vs_generate.py [--dtype bfloat16] [--tokens 64] [--repeats 3]

Alternates generate and labkit's autoregressive decoder on the embedded SmolLM2, one thread, CPU time, and
prints the min over repeats of each and their ratio (> 1: the baseline is faster). With `--between-tr` a
Token Recycling run (other tree shapes through the same model) precedes every measurement, as in the benchmark,
where methods are interleaved.
"""
import argparse
import time

import torch

from labkit import engine
from labkit.methods import create
from labkit.models import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--between-tr", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    lm = load("smollm2-135m", dtype=a.dtype)
    ids = lm.encode("Write a long story about a lighthouse keeper and a storm.")

    def ar() -> float:
        t = time.process_time()
        n = sum(len(s.tokens) for s in engine.decode(lm, create("autoregressive", lm), ids, max_new_tokens=a.tokens))
        if n != a.tokens:
            raise SystemExit(f"the baseline stopped after {n} of {a.tokens} tokens (EOS): pick another prompt")
        return time.process_time() - t

    def gen() -> float:
        x = torch.tensor([ids])
        t = time.process_time()
        with torch.inference_mode():
            lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=a.tokens, min_new_tokens=a.tokens,
                              do_sample=False)
        return time.process_time() - t

    def tr() -> None:
        if a.between_tr:
            list(engine.decode(lm, create("token_recycling", lm), ids, max_new_tokens=32))

    ar(), gen()  # warm-up
    times: dict[str, list[float]] = {"generate": [], "autoregressive": []}
    for _ in range(a.repeats):
        tr()
        times["generate"].append(gen())
        tr()
        times["autoregressive"].append(ar())
    for k, v in times.items():
        print(f"{k:15s} CPU s: {', '.join(f'{x:.2f}' for x in v)}  (min {min(v):.2f})")
    print(f"baseline speed / generate speed = {min(times['generate']) / min(times['autoregressive']):.3f} "
          f"({a.dtype}, {a.tokens} tokens, {'after a TR run each' if a.between_tr else 'alternating'})")


if __name__ == "__main__":
    main()
