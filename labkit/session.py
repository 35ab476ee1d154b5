"""A Session: one model, its method instances (whose state persists across prompts), and runs.

    lab = Session()                                   # the embedded SmolLM2, loaded on first use
    run = lab.run("token_recycling", "Tell me a story")
    run.text, run.metrics, run.save("story.jsonl")
    for step in lab.stream("prompt_lookup", "...", max_new_tokens=64): ...
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from . import __version__, engine, methods, metrics
from .sampling import GREEDY, SamplingConfig
from .models import DEFAULT_MODEL, LM, load
from .trace import Step, TraceWriter, save_trace


@dataclass(repr=False)
class Run:
    config: dict
    steps: list[Step] = field(default_factory=list)

    def __repr__(self) -> str:
        text = self.text
        return (f"Run({self.config.get('method')!r} on {self.config.get('model')!r}: {len(self.tokens)} tokens in "
                f"{len(self.steps)} steps, text={text[:60] + ('…' if len(text) > 60 else '')!r})")

    def _repr_html_(self) -> str:
        """A notebook shows a Run as its coloured text (draft tokens the target accepted in green) and metrics."""
        import html

        from . import views

        m = self.metrics
        name = self.config.get("method")
        rows = [("tokens", f"{m.new_tokens} in {m.rounds} rounds"), ("tokens/s (wall)", f"{m.tokens_per_s:.1f}"),
                ("target forwards", m.target_forwards), ("mean acceptance length", f"{m.mean_accept_len:.2f}"),
                ("draft tokens accepted", f"{m.accepted}/{m.drafted}" if m.drafted else "-")]
        cells = "".join(f"<tr><td style='text-align:left'>{k}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        head = html.escape(f"{self.config.get('method_description', name)} on {self.config.get('model')}")
        return (f"<div><div><b>{head}</b></div>"
                f"{views.token_stream_html(self.steps, autoregressive=methods.own_tokens_only(name))}"
                f"<table>{cells}</table></div>")

    @property
    def tokens(self) -> list[int]:
        return [t for s in self.steps for t in s.tokens]

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.steps)

    @property
    def metrics(self) -> metrics.Metrics:
        return metrics.compute(self.steps)

    def save(self, path) -> None:
        save_trace(path, self.config, self.steps)


def sampling_config(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> SamplingConfig:
    return SamplingConfig(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), seed=int(seed))


@dataclass
class Started:
    """A checked request, ready to decode (`Session.start`): the method instance, the prompt ids, the run's
    config (what a trace records) and the iterator of its Steps (and sparsity frames)."""
    method: engine.Method
    ids: list[int]
    config: dict
    steps: Iterator


class Session:
    def __init__(self, model: str = DEFAULT_MODEL, *, dtype: str | None = None, device: str | None = None,
                 lm: LM | None = None, trust_remote_code: bool = False, backend: str = "auto",
                 device_map: str | None = None):
        """`backend`: the execution path (see `labkit.backends`): "auto" = the fast CPU path on a CPU, stock
        kernels on a GPU; "stock" = transformers' model as loaded. `device_map="auto"` spreads a model larger
        than one device over all of them (accelerate)."""
        self.model_name = lm.name if lm is not None else model
        self._load_args = dict(dtype=dtype, device=device, trust_remote_code=trust_remote_code, backend=backend,
                               device_map=device_map)
        self._lm = lm
        if lm is not None and backend != "auto":
            from . import backends

            backends.apply(lm.model, backend)
        self._methods: dict[tuple, engine.Method] = {}

    @property
    def lm(self) -> LM:
        if self._lm is None:
            self._lm = load(self.model_name, **self._load_args)
        return self._lm

    def method(self, name: str, **params: Any) -> engine.Method:
        """The session's instance of a method with these parameters (created once, state kept)."""
        key = (name, tuple(sorted((k, str(v)) for k, v in params.items())))
        if key not in self._methods:
            self._methods[key] = methods.create(name, self.lm, params)
        return self._methods[key]

    def reset(self, name: str | None = None) -> None:
        """Forget method state (e.g. the Token Recycling matrix): all methods, or those called `name`."""
        for (n, _), m in self._methods.items():
            if name is None or n == name:
                m.reset()

    def config(self, method: engine.Method, prompt: str, prompt_ids: list[int], max_new_tokens: int,
               sampling: SamplingConfig, chat: bool) -> dict:
        params = dataclasses.asdict(method.params) if method.params is not None else {}
        return {"labkit": __version__, "model": self.model_name, "dtype": str(self.lm.dtype).replace("torch.", ""),
                "device": str(self.lm.device), "backend": self.lm.backend, "method": method.name,
                "method_description": method.describe(),
                "lossless": method.lossless, "params": params, "sampling": dataclasses.asdict(sampling),
                "max_new_tokens": max_new_tokens, "chat": chat, "prompt": prompt, "prompt_ids": prompt_ids}

    def prepare(self, method: str | engine.Method, prompt: str | list[int], *, max_new_tokens: int = 128,
                sampling: SamplingConfig | None = None, chat: bool = True,
                params: dict | None = None) -> tuple[engine.Method, list[int], dict]:
        """Validate a request and resolve it to (method instance, prompt ids, run config)."""
        m = self.method(method, **(params or {})) if isinstance(method, str) else method
        engine.check_supported(m, self.lm)
        sampling = sampling or GREEDY
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("the prompt is empty")
            ids = self.lm.encode(prompt, chat=chat)
        else:
            ids = list(prompt)
        engine.check_request(self.lm, ids, max_new_tokens)
        cfg = self.config(m, prompt if isinstance(prompt, str) else "", ids, max_new_tokens, sampling, chat)
        return m, ids, cfg

    def start(self, method: str | engine.Method, prompt: str | list[int], *, max_new_tokens: int = 128,
              sampling: SamplingConfig | None = None, chat: bool = True, detail: bool = True,
              trace: str | None = None, should_stop: Callable[[], bool] | None = None,
              params: dict | None = None, sparsity: Any = None) -> "Started":
        """Check a request once and hand back everything a run needs: the method instance, the prompt ids, the
        run's config and its Step iterator (bad input raises here, before anything runs). With `trace=path`,
        the steps are also written to a JSON-lines trace as they come. With `sparsity=` (a policy name, a
        `labkit.sparsity.Policy` or `labkit.sparsity.Options`), the decode runs under that KV-selection policy
        and each Step is followed by its `labkit.sparsity.SparsityFrame`."""
        m, ids, cfg = self.prepare(method, prompt, max_new_tokens=max_new_tokens, sampling=sampling, chat=chat,
                                   params=params)
        if sparsity is not None:
            from .sparsity import decode, describe
            events = decode(self.lm, m, ids, sparsity, max_new_tokens=max_new_tokens, sampling=cfg_sampling(cfg),
                               detail=detail, should_stop=should_stop)
            cfg = {**cfg, "sparsity": describe(sparsity)}
        else:
            events = engine.decode(self.lm, m, ids, max_new_tokens=max_new_tokens, sampling=cfg_sampling(cfg),
                                   detail=detail, should_stop=should_stop)
        return Started(m, ids, cfg, events if trace is None else _tee(events, trace, cfg))

    def stream(self, method: str | engine.Method, prompt: str | list[int], **kwargs) -> Iterator[Step]:
        """Steps as the model decodes: `start(...).steps` (the same arguments)."""
        return self.start(method, prompt, **kwargs).steps

    def run(self, method: str | engine.Method, prompt: str | list[int], **kwargs) -> Run:
        """Decode to the end and return the Run (config, steps, text, metrics)."""
        started = self.start(method, prompt, **kwargs)
        return Run(config=started.config, steps=list(started.steps))

    def compare(self, methods: "Sequence[str] | Mapping[str, str | tuple[str, dict]]", prompt: str | list[int],
                **kwargs) -> dict[str, Run]:
        """Run several methods on the same prompt (same sampling, same budget), one after the other, and return
        {label: Run} for `views.side_by_side`. `methods` is a list of names, or {label: name} /
        {label: (name, params)} to compare one method under different parameters. Method state persists as in
        `run` (call `reset()` first for cold starts)."""
        items = ({m: (m, None) for m in methods} if not isinstance(methods, Mapping) else
                 {k: (v, None) if isinstance(v, str) else (v[0], v[1]) for k, v in methods.items()})
        if not items:
            raise ValueError("compare needs at least one method")
        out: dict[str, Run] = {}
        for label, (name, params) in items.items():
            kw = dict(kwargs)
            if params is not None:
                kw["params"] = {**(kw.get("params") or {}), **params}
            out[label] = self.run(name, prompt, **kw)
        return out

    def latency_curve(self, backend: str | None = None, *, refresh: bool = False):
        """This device's latency curve for the session's model (`labkit.latency.latency_curve`: one verify forward
        over 1..81 tokens with a tree mask, the fastest of 7 shuffled repeats, cached on disk per model, device,
        dtype, backend and thread count). `backend="stock"` measures the stock path of the same model object
        (and switches back afterwards); None: the path the model runs on."""
        from . import backends, latency

        lm = self.lm
        with backends.use(lm.model, backend or lm.backend):
            return latency.latency_curve(lm, refresh=refresh)


def cfg_sampling(cfg: dict) -> SamplingConfig:
    return SamplingConfig(**cfg["sampling"])


def _tee(steps: Iterator[Step], path, cfg: dict) -> Iterator[Step]:
    with TraceWriter(path, cfg) as w:
        for step in steps:
            w.write(step)
            yield step
