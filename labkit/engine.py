"""The one decoding loop: propose -> verify -> accept -> commit, yielding a `Step` per round.

A method (see `Method`) only proposes draft trees and learns from verified logits. Everything else lives
here and is shared by every method and by the autoregressive baseline:

- verify: the whole tree in ONE forward pass of the stock HF model, with explicit position ids
  (root at the KV length, a node at KV length + depth) and a 4D additive attention mask derived from
  the parent array (chains use the model's own causal mask);
- accept: a pure rule from `labkit.accept` (greedy longest match, or recursive rejection sampling);
- commit: keep only the accepted path in the KV cache (`Cache.crop` for chains, a gather then crop
  for trees).

The KV cache always holds every committed token except the last one, which is the next round's root.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch

from .accept import Outcome, greedy_tree, rejection_tree, sample
from .sampling import GREEDY, SamplingConfig, probs
from . import tree
from .models import LM, cache_kwargs
from .devices import synchronize
from .gate import hold
from .trace import BONUS_ARGMAX, BONUS_SAMPLED, Node, Step, Timing


# ---- the method protocol ---------------------------------------------------------------------------

@dataclass
class Proposal:
    """A draft tree. `q[i]` is the draft distribution node i was drawn from (None: point masses)."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    q: torch.Tensor | None = None
    without_replacement: bool = False  # siblings drawn without replacement (RSD); affects the residual
    draft_forwards: int = 0
    state: dict = field(default_factory=dict)


@dataclass
class Verified:
    """What the target said about a proposal; passed to `Method.observe` after acceptance."""

    seq: list[int]  # committed tokens before this round, root last
    proposal: Proposal
    logits: torch.Tensor  # [n+1, V] raw target logits at the verify positions (root first)
    path: list[int]
    bonus: int


class Method:
    """Base class of every decoding method. Subclasses set the class attributes and override
    `propose` (and usually `observe`). A method instance keeps its state across prompts until `reset()`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    kind: ClassVar[str] = "speculative"  # speculative | baseline | strategy
    Params: ClassVar[type] = None  # a dataclass of parameters with defaults
    # The keys every decode round's Step.state carries (with detail=True), declared next to the method that
    # writes them: its state view (views.method_state) reads them, and a registry-wide test checks every round
    state_keys: ClassVar[tuple[str, ...]] = ()
    # A prompt on which this method's drafts show what they do (the app starts a visitor there)
    example: ClassVar[str] = "List the planets of the solar system in order, one per line, with one fact each."
    # Other settings of the method that are methods in their own right (the paper's reference mode beside
    # labkit's variant, ...): parameter overrides. `methods.variants()` lists them as specs
    # ("aded:mode=reference"); the registry-parametrized tests, `labkit methods` and the docs cover each one.
    variants: ClassVar[tuple[dict[str, Any], ...]] = ()
    # True for a method that changes how the shared model computes while it drafts (a sparsity capture): its
    # runs hold the model's gate exclusively (labkit.gate), so no other run computes through the change
    exclusive_model: ClassVar[bool] = False

    def __init__(self, lm: LM, params: Any = None):
        self.lm = lm
        self.params = params if params is not None else (self.Params() if self.Params else None)

    # Set by the engine before `start()`: the generation's `Target` (its KV cache holds every committed token
    # but the root). Self-speculative methods (layer skipping, early exit) draft through it and must leave it
    # exactly as they found it.
    target: "Target | None" = None
    # Set by the engine before `start()`: whether this generation records per-node detail (text, probabilities,
    # reasons). Methods may skip building display-only state (e.g. matrix rows read) when it is False.
    detail: bool = True

    @classmethod
    def supports(cls, lm: LM) -> str | None:
        """None if the method can run on this model, else a one-line reason (tests skip, the UI explains)."""
        return None

    def reset(self) -> None:
        """Forget all state (e.g. a learned matrix)."""

    def start(self, prompt: list[int], sampling: SamplingConfig) -> None:
        """Called once per generation, before the first proposal."""

    def prompt_positions(self) -> int:
        """How many of the prompt's last positions this method wants the target's logits of (0: none). The
        engine computes them in its own prefill pass and hands them to `observe_prompt`: no extra forward."""
        return 0

    def observe_prompt(self, prompt: list[int], logits: torch.Tensor) -> None:
        """Called after the prefill when `prompt_positions()` > 0: `logits[i]` are the target's next-token
        logits after prompt[len(prompt) - len(logits) + i]."""

    def propose(self, seq: list[int], sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        return Proposal()

    def observe(self, v: Verified) -> dict:
        """Learn from the verified round; return what changed (goes into Step.state)."""
        return {}

    def accept(self, prop: Proposal, logits: torch.Tensor, sampling: SamplingConfig,
               generator: torch.Generator, label: Callable[[int], str]) -> Outcome:
        """The acceptance rule: greedy longest match, or recursive rejection sampling over siblings.
        Methods with their own rule (SpecTr's k-sequential selection, lossy relaxed rules) override this."""
        if sampling.greedy:
            return greedy_tree(prop.parents, prop.tokens, logits.argmax(-1).tolist(), label)
        return rejection_tree(prop.parents, prop.tokens, probs(logits, sampling), prop.q, generator,
                                without_replacement=prop.without_replacement)

    # Non-speculative strategies (beam search, contrastive search, ...) that do not fit
    # propose/verify/accept set `custom_loop = True` and implement `run`, yielding Steps themselves.
    custom_loop: ClassVar[bool] = False

    def run(self, prompt: list[int], *, max_new_tokens: int, sampling: SamplingConfig, detail: bool,
            generator: torch.Generator, should_stop: Callable[[], bool] | None) -> Iterator[Step]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.title or self.name

    # ---- optional hooks, with do-nothing defaults (the bench and the app call them on every method) ----
    # A `labkit.sizing` sizer when the method sizes its drafts to the device (the bench records its state).
    sizer: Any = None

    @contextlib.contextmanager
    def warm_up(self) -> Iterator["Method"]:
        """A context for the bench's warm-up runs (Token Recycling drafts big trees inside it); default: none."""
        yield self

    def state_bytes(self) -> int:
        """Memory the method keeps across prompts (e.g. Token Recycling's matrix): by default the tensors and
        arrays among the instance's own attributes."""
        import numpy as np

        total = 0
        for key, value in vars(self).items():
            if key in ("lm", "target", "params"):
                continue
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
            elif isinstance(value, np.ndarray):
                total += value.nbytes
        return total


# ---- the target side: KV cache and forwards --------------------------------------------------------

class Target:
    """Owns the target model's KV cache for one generation."""

    def __init__(self, lm: LM):
        from .backends import new_cache

        self.lm = lm
        self.model = lm.model
        self.cache = new_cache(lm.model)  # grows in place on the fast path
        self.kv_len = 0
        self.window = tree.sliding_window(lm.config)
        self._keep_arg = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._blocks: dict[tuple[int, ...], torch.Tensor] = {}  # tree part of the mask, per tree shape
        self._no_trees = tree.tree_refusal(lm.model, lm.name)  # why this model cannot verify a tree (None: it can)
        self.device, self.dtype = lm.device, lm.dtype  # looked up once: the properties walk the parameters

    def _forward(self, ids: list[int], positions: list[int], mask, keep: int = 0) -> torch.Tensor:
        """Logits [len(ids), V], or of the last `keep` positions only (keep > 0)."""
        dev = self.device
        kwargs: dict[str, Any] = dict(
            input_ids=torch.tensor([ids], device=dev),
            position_ids=torch.tensor([positions], device=dev),
            **cache_kwargs(self.lm.model, self.cache), use_cache=True)
        if mask is not None:
            kwargs["attention_mask"] = mask
        if keep and self._keep_arg:
            kwargs["logits_to_keep"] = keep
        out = self.model(**kwargs)
        return out.logits[0, -keep:] if keep else out.logits[0]

    @torch.inference_mode()
    def prefill(self, prompt: list[int], keep: int = 1) -> torch.Tensor:
        """Fill the cache with the prompt; the logits [keep, V] after its last `keep` positions."""
        logits = self._forward(prompt, list(range(len(prompt))), None, keep=max(1, min(keep, len(prompt))))
        self.kv_len = len(prompt)
        return logits

    def mask(self, parents: Sequence[int]):
        """The 4D mask for a tree (None for a chain: the model's causal mask is the tree mask)."""
        if tree.is_chain(parents):
            return None
        if self._no_trees:
            raise tree.TreeUnsupported(self._no_trees)
        dev, dt = self.device, self.dtype
        if self.window is None:
            # = T.attention_mask(parents, self.kv_len): the prefix columns are all zeros and the tree block
            # depends only on the shape, so the block is built once per shape (on the device) and copied in.
            key = tuple(parents)
            block = self._blocks.get(key)
            if block is None:
                block = tree.attention_mask(parents, 0, dtype=dt, device=dev)[0, 0]
                if len(self._blocks) >= 256:
                    self._blocks.clear()
                self._blocks[key] = block
            n1 = block.shape[0]
            full = torch.zeros((1, 1, n1, self.kv_len + n1), dtype=dt, device=dev)
            full[0, 0, :, self.kv_len:] = block
            return full
        full = tree.attention_mask(parents, self.kv_len, dtype=dt, device=dev)
        return {"full_attention": full,
                "sliding_attention": tree.attention_mask(parents, self.kv_len, dtype=dt, device=dev, window=self.window)}

    @torch.inference_mode()
    def verify(self, root: int, tokens: list[int], parents: list[int]) -> torch.Tensor:
        """Logits [n+1, V] for root + nodes; the cache grows by n + 1 entries (undone by `commit`)."""
        return self._forward([root] + list(tokens), tree.position_ids(parents, self.kv_len), self.mask(parents))

    @torch.inference_mode()
    def commit(self, n_nodes: int, path: list[int]) -> None:
        """Keep the root and the accepted path in the cache; drop the other n_nodes - len(path) entries."""
        start = self.kv_len + 1  # first node slot
        keep = list(path)
        if keep != list(range(len(keep))):  # not a prefix of the input: gather the path into place
            src_cpu = torch.tensor([start + i for i in keep])
            src_on: dict[torch.device, torch.Tensor] = {}  # layers may sit on several devices (device_map)
            for layer in self.cache.layers:
                if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                    continue
                dev = layer.keys.device
                src = src_on.get(dev)
                if src is None:
                    src = src_on[dev] = src_cpu.to(dev)
                layer.keys[..., start:start + len(keep), :] = layer.keys.index_select(-2, src)
                layer.values[..., start:start + len(keep), :] = layer.values.index_select(-2, src)
        drop = n_nodes - len(keep)
        if drop:
            self.cache.crop(-drop)
        self.kv_len += 1 + len(keep)


# ---- the loop --------------------------------------------------------------------------------------

class Detokenizer:
    """Incremental detokenization: text deltas that never split a multi-byte character."""

    def __init__(self, lm: LM, prompt_tail: list[int]):
        self.lm = lm
        self.ids = list(prompt_tail)
        self.prefix = len(self.ids)  # tokens used only as context
        self.read = len(self.ids)

    def push(self, new: list[int]) -> str:
        self.ids.extend(new)
        before = self.lm.decode(self.ids[self.prefix:self.read])
        after = self.lm.decode(self.ids[self.prefix:])
        if after.endswith("\ufffd"):
            return ""  # incomplete character: wait for more tokens
        self.read = len(self.ids)
        delta = after[len(before):]
        if len(self.ids) - self.prefix > 16:  # keep the window short
            self.prefix = max(self.prefix, self.read - 4)
        return delta


def _stop_at(tokens: list[int], eos: frozenset[int], budget: int) -> tuple[list[int], str]:
    out = []
    for t in tokens:
        if len(out) >= budget:
            return out, "length"
        out.append(t)
        if t in eos:
            return out, "eos"
    return out, ("length" if len(out) >= budget else "")


def one_token_finished(tok: int, n: int, eos: frozenset[int], max_new_tokens: int) -> str:
    """Why a generation that has just committed its n-th token `tok` ends ("eos", "length") or "" if it goes on."""
    return "eos" if tok in eos else ("length" if n >= max_new_tokens else "")


def token_step(index: int, root: int, tok: int, nodes, *, detail: bool, label: Callable[[int], str], text: str,
               how: str, timing: Timing, kv_len: int, finished: str, state: dict, target_forwards: int = 1,
               draft_forwards: int = 0) -> Step:
    """The Step of a round that commits one token chosen among candidates (the decoding strategies: one node per
    candidate, its status and reason saying how the choice fell, no accepted path). The strategies' one Step
    builder; the speculative rounds are built by `decode`."""
    return Step(index=index, kind="prefill" if index == 0 else "decode", root=root,
                root_text=label(root) if detail else "", nodes=tuple(nodes), accepted=(), tokens=(tok,), text=text,
                bonus=tok, bonus_text=label(tok) if detail else "", bonus_how=how, target_forwards=target_forwards,
                draft_forwards=draft_forwards, timing=timing, kv_len=kv_len, finished=finished, state=state)


@dataclass
class Pick:
    """One round of a one-token strategy, before it becomes a Step: the chosen token, the candidates considered
    (as nodes, each with its status and reason), how the choice fell, and the round's bookkeeping."""
    root: int
    token: int
    nodes: Sequence[Node]
    how: str
    timing: Timing
    kv_len: int
    state: dict = field(default_factory=dict)
    target_forwards: int = 1
    draft_forwards: int = 0


def token_loop(lm: LM, prompt: list[int], picks: Iterator[Pick], *, max_new_tokens: int, detail: bool,
               should_stop: Callable[[], bool] | None) -> Iterator[Step]:
    """The one loop of the one-token strategies (greedy / top-k / ..., contrastive search, EAD): every `Pick` the
    strategy's generator yields (it advances its own caches between picks) becomes a Step; the loop detokenizes,
    ends at an EOS token, after `max_new_tokens` or when `should_stop()` says so, and closes the generator."""
    detok = Detokenizer(lm, prompt[-4:])
    label = (lambda t: lm.token_texts([t])[0]) if detail else str
    try:
        for n, pick in enumerate(picks, start=1):
            finished = one_token_finished(pick.token, n, lm.eos_ids, max_new_tokens)
            yield token_step(n - 1, pick.root, pick.token, pick.nodes, detail=detail, label=label,
                             text=detok.push([pick.token]), how=pick.how, timing=pick.timing, kv_len=pick.kv_len,
                             finished=finished, state=pick.state, target_forwards=pick.target_forwards,
                             draft_forwards=pick.draft_forwards)
            if finished or (should_stop is not None and should_stop()):
                return
    finally:
        picks.close()


def check_supported(method: "Method | type[Method]", lm: LM) -> None:
    """Raise ValueError with one clear line when `method` (an instance or a registered class) cannot run on `lm`."""
    reason = method.supports(lm)
    if reason:
        raise ValueError(f"{method.name} cannot run on {lm.name}: {reason}")


def check_request(lm: LM, prompt: list[int], max_new_tokens: int) -> None:
    """Raise ValueError with one clear line for a request the model cannot serve."""
    if not prompt:
        raise ValueError("the prompt is empty")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if len(prompt) + max_new_tokens > lm.max_length:
        raise ValueError(f"the prompt ({len(prompt)} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's context of {lm.max_length} tokens")


def decode(lm: LM, method: Method, prompt: list[int], *, max_new_tokens: int = 128,
           sampling: SamplingConfig = GREEDY, detail: bool = True,
           should_stop: Callable[[], bool] | None = None) -> Iterator[Step]:
    """Run `method` on `prompt` (token ids) and yield one Step per round.

    The first Step is the prefill (it reads the prompt and picks the first token). Generation ends at an
    EOS token, after `max_new_tokens`, or when `should_stop()` returns True (checked between rounds, and while
    waiting for another run to release the shared model: then no Step at all). Each
    Step's `timing.start` is when its round began, in seconds since the run began.
    """
    t_run = time.perf_counter()
    with hold(lm, exclusive=method.exclusive_model, should_stop=should_stop) as held:  # other runs (labkit.gate)
        if not held:  # stopped while another run held the model: no rounds
            return
        for step in _decode(lm, method, prompt, max_new_tokens=max_new_tokens, sampling=sampling, detail=detail,
                            should_stop=should_stop):
            # a round ends just before it is yielded: it began `total` seconds earlier
            start = max(0.0, time.perf_counter() - t_run - step.timing.total)
            yield dataclasses.replace(step, timing=dataclasses.replace(step.timing, start=start))


def _decode(lm: LM, method: Method, prompt: list[int], *, max_new_tokens: int, sampling: SamplingConfig,
            detail: bool, should_stop: Callable[[], bool] | None) -> Iterator[Step]:
    check_request(lm, prompt, max_new_tokens)
    gen = torch.Generator(device=_logits_device(lm))
    gen.manual_seed(sampling.seed)
    check_supported(method, lm)
    method.detail = detail
    if method.custom_loop:
        method.target = None
        method.start(prompt, sampling)
        yield from method.run(prompt, max_new_tokens=max_new_tokens, sampling=sampling, detail=detail,
                              generator=gen, should_stop=should_stop)
        return
    eos = lm.eos_ids
    target = Target(lm)
    # phase times are read after the device's queued work is done (CUDA launches are asynchronous: without a
    # sync the verify pass's time would land in whichever phase next waits for its result); a no-op on CPU
    def sync() -> None:
        synchronize(target.device)

    detok = Detokenizer(lm, prompt[-4:])
    label = (lambda t: lm.token_texts([t])[0]) if detail else str
    method.target = target
    method.start(prompt, sampling)

    # 0. prefill: read the prompt, let the method see the logits it asked for, pick the first token
    t0 = time.perf_counter()
    want = min(method.prompt_positions(), len(prompt))
    logits = target.prefill(prompt, keep=want)
    sync()
    t1 = time.perf_counter()
    if want:
        method.observe_prompt(prompt, logits[-want:])
    logits = logits[-1]
    t_obs = time.perf_counter()
    if sampling.greedy:
        first, how = int(logits.argmax()), BONUS_ARGMAX
    else:
        first, how = sample(probs(logits, sampling), gen), BONUS_SAMPLED
    seq = list(prompt) + [first]
    n_new = 1
    finished = one_token_finished(first, n_new, eos, max_new_tokens)
    text = detok.push([first])
    t2 = time.perf_counter()
    yield Step(index=0, kind="prefill", root=prompt[-1], root_text=label(prompt[-1]) if detail else "",
               nodes=(), accepted=(), tokens=(first,), text=text, bonus=first,
               bonus_text=label(first) if detail else "", bonus_how=how, target_forwards=1, draft_forwards=0,
               timing=Timing(verify=t1 - t0, commit=t_obs - t1, accept=t2 - t_obs, total=t2 - t0), kv_len=target.kv_len,
               finished=finished)

    index = 1
    while not finished:
        if should_stop is not None and should_stop():
            return
        # 1. propose: the method drafts a tree under the last committed token (the root)
        t0 = time.perf_counter()
        root = seq[-1]
        prop = method.propose(seq, sampling, gen)
        budget_depth = max_new_tokens - n_new - 1  # never draft deeper than the token budget can commit
        # (a tree of n nodes is at most n deep: its depths are computed only when it might be too deep)
        if len(prop.tokens) > budget_depth and max(tree.depths(prop.parents)) > budget_depth:
            prop = _truncate(prop, max(budget_depth, 0))
        sync()
        # 2. verify: one target forward over the root and every drafted node (4D tree mask, position ids)
        t1 = time.perf_counter()
        logits = target.verify(root, prop.tokens, prop.parents)
        sync()
        # 3. accept: the method's acceptance rule walks the tree; the path and the bonus token come out
        t2 = time.perf_counter()
        out = method.accept(prop, logits, sampling, gen, label)
        sync()
        # 4. commit: keep the accepted path's KV entries, let the method learn, cut at EOS / the token budget
        t3 = time.perf_counter()
        target.commit(len(prop.tokens), out.path)
        state = dict(prop.state)
        state.update(method.observe(Verified(seq, prop, logits, out.path, out.bonus)))
        new = [prop.tokens[i] for i in out.path] + [out.bonus]
        kept, finished = _stop_at(new, eos, max_new_tokens - n_new)
        seq.extend(kept)
        n_new += len(kept)
        text = detok.push(kept)
        # 5. record: the round as a Step (nodes with their decisions and, with detail, texts and probabilities)
        t4 = time.perf_counter()
        nodes = _nodes(lm, prop, out, logits, sampling, detail)
        t5 = time.perf_counter()
        yield Step(index=index, kind="decode", root=root, root_text=label(root) if detail else "",
                   nodes=nodes, accepted=tuple(out.path), tokens=tuple(kept), text=text, bonus=out.bonus,
                   bonus_text=label(out.bonus) if detail else "", bonus_how=out.bonus_how,
                   target_forwards=1, draft_forwards=prop.draft_forwards,
                   timing=Timing(draft=t1 - t0, verify=t2 - t1, accept=t3 - t2, commit=t4 - t3, total=t5 - t0),
                   kv_len=target.kv_len, finished=finished, state=state)
        index += 1


def _logits_device(lm: LM) -> torch.device:
    """Where the logits come out: the output embedding's device (= lm.device unless the model is spread over
    several devices with device_map, where inputs go to the first device and logits leave the last one)."""
    out = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) and weight.device.type != "meta" else lm.device


def _truncate(prop: Proposal, max_depth: int) -> Proposal:
    """Keep the nodes at depth <= max_depth (a node's ancestors are shallower, so the result is still a tree;
    parents precede children, so the kept nodes keep their order)."""
    keep = [i for i, d in enumerate(tree.depths(prop.parents)) if d <= max_depth]
    new = {old: j for j, old in enumerate(keep)}
    q = prop.q[keep] if prop.q is not None else None
    return dataclasses.replace(prop, tokens=[prop.tokens[i] for i in keep],
                               parents=[new[prop.parents[i]] if prop.parents[i] >= 0 else -1 for i in keep], q=q)


def _nodes(lm: LM, prop: Proposal, out: Outcome, logits: torch.Tensor, sampling: SamplingConfig,
           detail: bool) -> tuple[Node, ...]:
    n = len(prop.tokens)
    if n == 0:
        return ()
    depth = tree.depths(prop.parents)
    if not detail:
        return tuple(Node(token=prop.tokens[i], parent=prop.parents[i], depth=depth[i],
                          status=out.decisions[i].status) for i in range(n))
    tok = torch.tensor(prop.tokens, device=logits.device)
    rows = torch.tensor([p + 1 for p in prop.parents], device=logits.device)
    p_x = probs(logits[rows], sampling).gather(-1, tok[:, None])[:, 0].tolist()
    q_x = prop.q.gather(-1, tok[:, None].to(prop.q.device))[:, 0].tolist() if prop.q is not None else [None] * n
    texts = lm.token_texts(prop.tokens)
    return tuple(
        Node(token=prop.tokens[i], parent=prop.parents[i], depth=depth[i], status=d.status, text=texts[i],
             draft_prob=q_x[i], target_prob=p_x[i], accept_prob=d.accept_prob, draw=d.draw, reason=d.reason)
        for i, d in enumerate(out.decisions))
