"""The acceptance table of docs/zoo_sources.md: mean acceptance length (tokens committed per target forward,
bonus included) of the training-free drafters on three short prompts, greedy, one method instance carried
across the prompts in order (as in a session), on the embedded SmolLM2-135M-Instruct.

    python scripts/zoo_acceptance.py                      # the table's methods
    python scripts/zoo_acceptance.py swift swift:granularity=layer

The last column is wall-clock decode speed over the three prompts relative to autoregressive decoding run in the
same process (one sample each: read it as a rough guide, the bench is where speed is measured).
"""
from __future__ import annotations

import sys

from labkit import Session, methods, metrics

PROMPTS = {
    "code": "Write a Python function that adds two numbers.",
    "sky": "Explain why the sky is blue.",
    "grammar": "Correct the grammar and repeat the corrected text: Me and him goes to the store yesterday, and we "
               "buyed three apple and a milks. The cashier were very kindly to us.",
}
DEFAULT = ["prompt_lookup", "copy_spec", "lookahead", "aded", "swift", "swift:granularity=layer", "early_exit"]


def main(specs: list[str]) -> None:
    lab = Session()

    def run_all(spec: str) -> list:
        m = methods.create(spec, lab.lm)  # one instance across the prompts
        return [lab.run(m, p, max_new_tokens=64) for p in PROMPTS.values()]

    lab.run("autoregressive", "Hello", max_new_tokens=8)  # warm-up
    base = run_all("autoregressive")
    base_tps = metrics.compute([s for r in base for s in r.steps]).tokens_per_s
    print("| method | " + " | ".join(f"{k}: mean acceptance length" for k in PROMPTS) + " | vs AR (wall) |")
    print("| --- |" + " --- |" * (len(PROMPTS) + 1))
    for spec in specs:
        runs = run_all(spec)
        tps = metrics.compute([s for r in runs for s in r.steps]).tokens_per_s
        cells = " | ".join(f"{r.metrics.mean_accept_len:.2f}" for r in runs)
        print(f"| {spec} | {cells} | {tps / base_tps:.2f}x |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
