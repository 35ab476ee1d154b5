"""`inside.verify_by_hand`: one verify pass redone in plain tensors (no cache) agrees with what the engine decided."""
import pytest

from labkit.inside import verify_by_hand
from labkit.session import Session


@pytest.mark.parametrize("method, params", [("token_recycling", {"sizing": "off", "nodes": 12, "prompt_rows": True}),
                                            ("prompt_lookup", {})])
def test_verify_by_hand_agrees_with_the_engine(tiny, method, params):
    lab = Session(lm=tiny("llama"))
    run = lab.run(method, "w1 w2 w3 w1 w2 w3 w1 w2", max_new_tokens=24, chat=False, params=params)
    rounds = [s for s in run.steps if s.kind == "decode" and s.nodes]
    assert rounds
    for step in rounds:
        table = verify_by_hand(lab.lm, run.config["prompt_ids"], run.steps, step)
        assert len(table) == len(step.nodes) + 1
        # walk the argmax from the root: the accepted path, then the bonus token
        pos, path = 0, []
        while True:
            kids = table["accepts child"].iloc[pos]
            if kids == "-":
                break
            pos = int(kids.split(",")[0])
            path.append(pos - 1)
        assert tuple(path) == tuple(step.accepted)
        assert table["target's argmax next"].iloc[pos] == lab.lm.token_texts([step.bonus])[0]


def test_verify_by_hand_refuses_a_prefill_step(tiny):
    lab = Session(lm=tiny("llama"))
    run = lab.run("prompt_lookup", "w1 w2 w3", max_new_tokens=4, chat=False)
    with pytest.raises(ValueError, match="prefill"):
        verify_by_hand(lab.lm, run.config["prompt_ids"], run.steps, run.steps[0])
