#!/usr/bin/env python
"""Load check (a script, not a timed test): N simulated visitors hit the app at once through the Gradio client.

Each client is its own session, asks the Live endpoint for a greedy generation of a different prompt with a
lossless method, and must get back exactly the text the autoregressive baseline produces for ITS prompt (so
nothing is mixed between visitors, and every lossless method is still token-identical under load). The queue
serves `--concurrency` generations at a time; the others wait, and the script records the places in the
queue each client was told.

    python scripts/load_check.py                     # starts `python app.py` on a free port, 6 clients
    python scripts/load_check.py --clients 10 --concurrency 2 --max-new-tokens 16
    python scripts/load_check.py --url http://127.0.0.1:7860/   # an app that is already running

Exit status 0 when every client got its own correct result.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a haiku about autumn leaves.",
    "What is the capital of France? Answer briefly.",
    "List three uses of a paperclip.",
    "Explain what a prime number is to a child.",
    "Give two tips for learning a new language.",
    "Describe the water cycle in one paragraph.",
    "Why do cats purr?",
    "Name three planets and one fact about each.",
    "What does a compiler do?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "How do bees make honey?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, concurrency: int, model: str) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--concurrency", str(concurrency),
                             "--models", model], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("app.py did not start in 180 s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--url", default=None, help="an app that is already running (default: start one)")
    ap.add_argument("--concurrency", type=int, default=2, help="for the app this script starts")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= len(PROMPTS):
        ap.error(f"--clients must be in [1, {len(PROMPTS)}]")

    from gradio_client import Client

    from labkit import methods
    from labkit.session import Session

    lab = Session(args.model)
    lossless = [n for n in methods.REGISTRY if methods.get(n).lossless and not methods.get(n).supports(lab.lm)
                and not methods.get(n).custom_loop]
    jobs = [(i, PROMPTS[i], lossless[i % len(lossless)]) for i in range(args.clients)]
    print(f"references: autoregressive greedy on {args.model}, {args.max_new_tokens} new tokens, "
          f"{args.clients} prompts...", flush=True)
    ref = {p: lab.run("autoregressive", p, max_new_tokens=args.max_new_tokens).text for _, p, _ in jobs}
    assert len(set(ref.values())) == len(ref), "two prompts have the same reference text; pick other prompts"

    proc = None
    url = args.url
    if url is None:
        port = free_port()
        print(f"starting app.py on port {port} (concurrency {args.concurrency})...", flush=True)
        proc = start_app(port, args.concurrency, args.model)
        url = f"http://127.0.0.1:{port}/"
    results: dict[int, dict] = {}
    try:
        barrier = threading.Barrier(args.clients)

        def visitor(i: int, prompt: str, method: str) -> None:
            r = results[i] = {"method": method, "ranks": set(), "updates": 0, "error": ""}
            try:
                client = Client(url, verbose=False)
                barrier.wait(timeout=120)
                t0 = time.time()
                job = client.submit(model=args.model, method=method, prompt=prompt, max_new=args.max_new_tokens,
                                    mode="greedy", chat=True, api_name="/live")
                while not job.done():
                    st = job.status()
                    if st.rank is not None and st.code.name == "IN_QUEUE":
                        r["ranks"].add(st.rank)
                    time.sleep(0.05)
                out = job.result()
                r["seconds"] = time.time() - t0
                r["updates"] = len(job.outputs())
                r["status"], r["text"] = out[0], out[-1]
            except Exception as e:  # noqa: BLE001 - reported per client below
                r["error"] = f"{type(e).__name__}: {e}"

        threads = [threading.Thread(target=visitor, args=job) for job in jobs]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    ok = 0
    print(f"\n{'client':>6}  {'method':16s} {'queue places seen':18s} {'updates':>7} {'seconds':>7}  result")
    for i, prompt, method in jobs:
        r = results[i]
        good = not r["error"] and r.get("text") == ref[prompt] and method in r.get("status", "")
        others = [p for _, p, _ in jobs if p != prompt and r.get("text") == ref[p]]
        ok += good
        verdict = "OK" if good else ("MIXED with another visitor's prompt" if others else
                                     (r["error"] or f"WRONG: {r.get('text', '')[:60]!r}"))
        places = ",".join(str(x) for x in sorted(r["ranks"])) or "-"
        print(f"{i:6d}  {method:16s} {places:18s} {r['updates']:7d} {r.get('seconds', float('nan')):7.1f}  {verdict}")
    queued = sum(1 for r in results.values() if r["ranks"])
    print(f"\n{ok}/{len(jobs)} clients got their own correct text; {queued} waited in the queue and saw their place; "
          f"wall {wall:.1f} s")
    return 0 if ok == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
