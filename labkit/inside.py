"""Open the box: one verify pass of a recorded round, redone by hand in plain tensors.

The engine verifies a draft tree with one forward over [root, node 1, ..., node n] on top of the KV cache, a 4D
attention mask (each node sees the prefix and its own ancestors) and position ids root + depth. `verify_by_hand`
does the same without any cache: the whole context plus the tree in one forward, with `tree.attention_mask` and
`tree.position_ids`, then reads the target's choice (argmax) at every verify position. In greedy decoding that
row is the whole rule: a drafted child is accepted when it equals its parent's row's argmax, and the argmax at
the last accepted position is the bonus token. Teaching code (it re-runs the whole context); models with
sliding-window layers need the engine's per-layer masks and are refused.
"""
from __future__ import annotations

import torch

from . import tree
from .models import LM
from .trace import Step


def verify_by_hand(lm: LM, prompt_ids: list[int], steps: list[Step], step: Step):
    """A pandas DataFrame, one row per verify position of `step` (0 = the root, j = draft node j - 1): its token,
    parent, position id, the target's argmax there (greedy: the token it wants next), the draft children
    it accepts, and the status the run recorded for the node. `prompt_ids` and `steps` are the run's (e.g.
    `run.config["prompt_ids"]`, `run.steps`)."""
    from .extras import require

    pd = require("pandas", "notebook", "inside.verify_by_hand")

    if tree.sliding_window(lm.config) is not None:
        raise ValueError("verify_by_hand draws one mask for every layer; this model has sliding-window layers")
    before = [t for s in steps[: steps.index(step)] for t in s.tokens]
    context = list(prompt_ids) + before  # its last token is the round's root, not yet in the KV cache
    if not before or context[-1] != step.root:
        raise ValueError(f"step {step.index}: its root is not the last committed token (a prefill step has no tree)")
    parents = [n.parent for n in step.nodes]
    past = len(context) - 1
    ids = context + [n.token for n in step.nodes]
    positions = list(range(past)) + tree.position_ids(parents, past)
    # who may see whom, [context + tree] x [context + tree]: the prefix is causal, and each tree query sees the
    # prefix and its own ancestors (tree.ancestor_mask); one additive mask for every layer
    allowed = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    allowed[past:, past:] = tree.ancestor_mask(parents)
    full = tree.additive_mask(allowed, dtype=lm.dtype, device=lm.device)
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids], device=lm.device),
                          position_ids=torch.tensor([positions], device=lm.device), attention_mask=full).logits[0]
    want = logits[past:].argmax(-1).tolist()  # the target's choice after each verify position
    label = lm.token_texts
    rows = []
    for j in range(len(step.nodes) + 1):
        tok = step.root if j == 0 else step.nodes[j - 1].token
        # the draft children of this position (node k sits at verify position k + 1) that the argmax picks
        matches = [k + 1 for k, p in enumerate(parents) if p == j - 1 and step.nodes[k].token == want[j]]
        rows.append({"verify position": j, "token": label([tok])[0], "parent": -1 if j == 0 else parents[j - 1] + 1,
                     "position id": positions[past + j], "target's argmax next": label([want[j]])[0],
                     "accepts child": ", ".join(map(str, matches)) or "-",
                     "recorded status": "root" if j == 0 else step.nodes[j - 1].status})
    return pd.DataFrame(rows).set_index("verify position")



def layer_predictions(lm: LM, ids: list[int], last: int = 8) -> dict:
    """What the model would predict if it stopped after each layer (the "logit lens": the final norm and LM head
    applied to every layer's hidden state, as an early exit does), for the last `last` positions of `ids`.
    Returns {"layers": [1..L], "inputs": token texts, "top": [layer][position] top-1 texts, "prob_final":
    [layer][position] the probability each layer gives the full model's own choice, "final": its choices,
    "settles": per position the first layer from which every later layer agrees with the full model}."""
    from .layers import LayerStack

    stack = LayerStack(lm)
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([ids], device=lm.device), output_hidden_states=True)
        hidden = out.hidden_states[1:]  # after each decoder layer (index 0 is the embedding)
        final = out.logits[0, -last:].argmax(-1)
        top, prob = [], []
        for i, h in enumerate(hidden):
            # the last hidden state already went through the final norm inside the model
            logits = out.logits[0, -last:] if i == len(hidden) - 1 else stack.logits(h[0, -last:])
            p = torch.softmax(logits.float(), -1)
            top.append(lm.token_texts(p.argmax(-1).tolist()))
            prob.append(p.gather(-1, final[:, None])[:, 0].tolist())
    final_texts = lm.token_texts(final.tolist())
    # per position, the first layer from which every later layer's top-1 is the full model's choice
    settles = []
    for j, want in enumerate(final_texts):
        layer = len(hidden)
        while layer > 1 and top[layer - 2][j] == want:
            layer -= 1
        settles.append(layer)
    return {"layers": list(range(1, len(hidden) + 1)), "inputs": lm.token_texts(ids[-last:]), "top": top,
            "prob_final": prob, "final": final_texts, "settles": settles}
