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


def test_layer_predictions_last_layer_is_the_model(tiny):
    from labkit import views
    from labkit.inside import layer_predictions

    lm = tiny("llama")
    ids = lm.tokenizer("w1 w2 w3 w1 w2", add_special_tokens=False)["input_ids"]
    pred = layer_predictions(lm, ids, last=3)
    n_layers = lm.config.num_hidden_layers
    assert pred["layers"] == list(range(1, n_layers + 1)) and len(pred["inputs"]) == 3
    assert pred["top"][-1] == pred["final"]  # the last layer is the model itself
    assert all(p == pytest.approx(max(p, 0)) for p in pred["prob_final"][-1])
    assert all(1 <= s <= n_layers for s in pred["settles"])
    fig = views.prediction_strip(pred)
    assert fig.layout.meta["view"] == "prediction_strip" and len(fig.data[0].z) == n_layers
