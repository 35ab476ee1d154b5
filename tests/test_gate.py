"""labkit.gate: runs on a shared model read it together; a run that changes how it computes runs alone."""
import threading
import time

from labkit import engine, methods
from labkit.check import greedy_reference
from labkit.gate import ModelGate
from labkit.testing import hold_in_another_thread


def test_exclusive_waits_for_other_threads_and_blocks_new_readers():
    gate, log = ModelGate(), []
    reading = threading.Event()

    def reader():
        with gate.shared():
            reading.set()
            time.sleep(0.2)
            log.append("reader done")

    t = threading.Thread(target=reader)
    t.start()
    reading.wait()
    with gate.exclusive():
        log.append("writer")
        late = threading.Thread(target=lambda: (gate.shared().__enter__(), log.append("late reader")))
        late.start()
        time.sleep(0.1)
        log.append("writer done")
    t.join()
    late.join()
    assert log == ["reader done", "writer", "writer done", "late reader"]


def test_wait_reason_says_why_a_hold_would_wait():
    gate = ModelGate()
    assert gate.wait_reason() == "" and gate.wait_reason(exclusive=True) == ""
    release = hold_in_another_thread(gate, exclusive=False)  # another thread reads: only running alone waits
    assert gate.wait_reason() == "" and "runs alone" in gate.wait_reason(exclusive=True)
    release()
    release = hold_in_another_thread(gate)  # another thread runs alone: every hold waits
    assert "another run is changing how the model computes" in gate.wait_reason()
    release()
    assert gate.wait_reason(exclusive=True) == ""


def test_a_thread_never_waits_for_itself():
    gate = ModelGate()
    with gate.shared(), gate.exclusive(), gate.shared(), gate.exclusive():
        pass  # a Compare interleaves its lanes in one thread: no deadlock


def test_a_sparse_draft_and_a_plain_run_share_a_model_across_threads(tiny):
    lm = tiny("llama", backend="fast")
    ids = [3, 8, 5, 1, 9, 4, 3, 8, 5, 1, 7, 2, 6, 3, 8, 5]
    want = greedy_reference(lm, ids, 24)
    out = {}

    def run(spec):
        steps = engine.decode(lm, methods.create(spec, lm), ids, max_new_tokens=24)
        out[spec] = [t for s in steps for t in s.tokens]

    threads = [threading.Thread(target=run, args=(s,)) for s in ("sparse_self_spec:budget=4:sinks=1",
                                                                 "autoregressive", "prompt_lookup")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(v == want for v in out.values()) and len(out) == 3


def test_stop_ends_a_wait_for_the_model(tiny):
    """Stop pressed while another thread has the model alone: the run gives up the wait and yields no round
    (engine and sparsity capture alike); the other run is untouched."""
    from labkit.sparsity import decode as sparse_decode

    lm = tiny("llama")
    ids = [3, 8, 5, 1, 9, 4]
    release = hold_in_another_thread(lm.gate)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.perf_counter()
    steps = list(engine.decode(lm, methods.create("autoregressive", lm), ids, max_new_tokens=4,
                               should_stop=stop.is_set))
    assert steps == [] and time.perf_counter() - t0 < 5
    assert list(sparse_decode(lm, methods.create("autoregressive", lm), ids, "streaming_llm", max_new_tokens=4,
                              should_stop=stop.is_set)) == []
    release()
    assert lm.gate.wait_reason(exclusive=True) == ""  # nothing left held
    after = engine.decode(lm, methods.create("autoregressive", lm), ids, max_new_tokens=4)
    assert sum(len(s.tokens) for s in after) == 4
