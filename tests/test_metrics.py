import pytest

from labkit.metrics import compute
from labkit.trace import ACCEPTED, NOT_REACHED, REJECTED, Node, Step, Timing


def step(i, nodes, accepted, tokens, total=1.0, kind="decode"):
    return Step(i, kind, 0, "", tuple(nodes), tuple(accepted), tuple(tokens), "", tokens[-1], "", "argmax", 1,
                0, Timing(verify=total * 0.8, draft=total * 0.1, total=total), 0)


def test_metric_definitions_on_hand_made_steps():
    steps = [
        step(0, [], [], [5], kind="prefill"),
        # chain of 3, two accepted, third rejected: 3 tokens this round
        step(1, [Node(1, -1, 1, ACCEPTED), Node(2, 0, 2, ACCEPTED), Node(3, 1, 3, REJECTED)], [0, 1], [1, 2, 9]),
        # tree: two children at depth 1, both rejected: 1 token
        step(2, [Node(1, -1, 1, REJECTED), Node(2, -1, 1, REJECTED), Node(4, 0, 2, NOT_REACHED)], [], [7]),
        # nothing drafted: 1 token, no attempt at any depth
        step(3, [], [], [8]),
        # depth-1 accepted, nothing drafted under it: 2 tokens, depth 2 not attempted
        step(4, [Node(1, -1, 1, ACCEPTED)], [0], [1, 6]),
    ]
    m = compute(steps)
    assert m.new_tokens == 1 + 3 + 1 + 1 + 2
    assert m.target_forwards == 5 and m.rounds == 4
    assert m.mean_accept_len == pytest.approx(7 / 4)  # decode tokens / decode forwards, bonus included
    assert m.drafted == 7 and m.accepted == 3
    assert m.draft_acceptance_rate == pytest.approx(3 / 7)
    # depth 1: tried in rounds 1, 2, 4; accepted in 1 and 4. depth 2: tried in round 1 only, accepted.
    # depth 3: tried in round 1, rejected.
    assert m.per_depth == ((1, pytest.approx(2 / 3), 3), (2, 1.0, 1), (3, 0.0, 1))
    assert m.accept_hist == (2, 1, 1, 0)
    assert m.wall == pytest.approx(5.0) and m.tokens_per_s == pytest.approx(8 / 5)
    assert dict(m.phase)["verify"] == pytest.approx(4.0)
    # vLLM's counters: 3 rounds drafted; positions 1, 2 reached by 2 and 1 of them; unconditional rates per draft
    assert m.num_drafts == 3 and m.num_accepted_tokens_per_pos == (2, 1, 0)
    assert m.per_position == pytest.approx((2 / 3, 1 / 3, 0.0))
    d = m.as_dict()
    assert (d["num_draft_tokens"], d["num_accepted_tokens"]) == (7, 3)


def test_autoregressive_scores_one():
    steps = [step(0, [], [], [1], kind="prefill")] + [step(i, [], [], [i]) for i in range(1, 6)]
    m = compute(steps)
    assert m.mean_accept_len == 1.0 and m.drafted == 0 and m.per_depth == () and m.accept_hist == (5,)


def test_empty():
    m = compute([])
    assert m.new_tokens == 0 and m.tokens_per_s == 0.0
