"""What the operator decides (AppConfig: the allow-list, limits, intervals), the models every visitor shares
(ModelPool), and the constants of the UI."""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..devices import default_device
from ..models import DEFAULT_MODEL, EMBEDDED, LM, ModelLoadError, load
from ..params import ParamError
from ..trace import TraceError



log = logging.getLogger("labkit.app")

# What a visitor can get wrong; anything else is a bug, logged with its traceback on the server and shown to
# the visitor as one line.
USER_ERRORS = (ParamError, ValueError, TraceError, ModelLoadError)


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"

    def __bool__(self) -> bool:
        return False


UNCHANGED: Any = _Unchanged()

MAX_COMPARE = 4  # methods a visitor can pick in Compare; the baseline runs too, so up to 5 columns
COMPARE_COLUMNS = MAX_COMPARE + 1
BASELINE = "autoregressive"
MODES = ("greedy", "sampling")


# ---- configuration ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppConfig:
    """What the operator decides. `models` is the allow-list: the only names a visitor can load."""

    models: tuple[str, ...] = tuple(EMBEDDED)
    default_model: str = ""
    dtype: str | None = None
    device: str | None = None
    device_map: str | None = None  # "auto": spread each model over every device (accelerate)
    backend: str = "auto"  # execution path of every model (labkit.backends): auto = fast on CPU, stock on GPU
    max_prompt_chars: int = 2000
    max_new_tokens: int = 256
    default_new_tokens: int = 64
    concurrency: int = 0  # generations running at once (all tabs together); the rest wait in the queue. 0 = one
    # per accelerator (visitors' speed numbers would otherwise skew each other) and 2 on a CPU
    max_queue: int = 32
    text_interval: float = 0.15  # seconds between updates of a streaming text (a browser that falls behind
    # the model would keep showing new rounds long after Stop)
    plot_interval: float = 0.3  # seconds between redraws of a streaming plot
    stats_interval: float = 1.0
    max_upload_mb: float = 20.0
    max_runs: int = 12  # runs a visitor keeps for the trace explorer (oldest dropped first)
    bench_max_per_category: int = 3
    bench_max_new_tokens: int = 96

    def __post_init__(self):
        models = tuple(m.strip() for m in self.models if m and m.strip())
        if not models:
            raise ValueError("the model allow-list is empty")
        object.__setattr__(self, "models", models)
        default = self.default_model or (DEFAULT_MODEL if DEFAULT_MODEL in models else models[0])
        if default not in models:
            raise ValueError(f"default model {default!r} is not on the allow-list ({', '.join(models)})")
        object.__setattr__(self, "default_model", default)
        if self.concurrency == 0:
            on_cpu = (torch.device(self.device) if self.device else default_device()).type == "cpu"
            object.__setattr__(self, "concurrency", 2 if on_cpu and not self.device_map else 1)
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 1 <= self.default_new_tokens <= self.max_new_tokens:
            object.__setattr__(self, "default_new_tokens", min(64, self.max_new_tokens))

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "AppConfig":
        """LABKIT_APP_MODELS (comma-separated allow-list), LABKIT_APP_CONCURRENCY, LABKIT_APP_MAX_NEW_TOKENS,
        LABKIT_APP_DTYPE, LABKIT_APP_DEVICE, LABKIT_APP_DEVICE_MAP, LABKIT_APP_BACKEND; keyword overrides (from CLI flags) win."""
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        if env.get("LABKIT_APP_MODELS"):
            kw["models"] = tuple(m for m in env["LABKIT_APP_MODELS"].split(","))
        for key, name in (("LABKIT_APP_CONCURRENCY", "concurrency"), ("LABKIT_APP_MAX_NEW_TOKENS", "max_new_tokens")):
            if env.get(key):
                try:
                    kw[name] = int(env[key])
                except ValueError:
                    raise ValueError(f"{key} must be an integer, got {env[key]!r}") from None
        for key, name in (("LABKIT_APP_DTYPE", "dtype"), ("LABKIT_APP_DEVICE", "device"),
                          ("LABKIT_APP_DEVICE_MAP", "device_map"), ("LABKIT_APP_BACKEND", "backend")):
            if env.get(key):
                kw[name] = env[key]
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


# ---- models, shared by every visitor ----------------------------------------------------------------------

class ModelPool:
    """Loads each allowed model once, on first use, and hands the same LM to every visitor."""

    def __init__(self, allowed: Sequence[str], *, dtype: str | None = None, device: str | None = None,
                 device_map: str | None = None, backend: str = "auto", loader: Callable[[str], LM] | None = None):
        self.allowed = tuple(allowed)
        self._loader = loader or (lambda name: load(name, dtype=dtype, device=device, trust_remote_code=False,
                                                     device_map=device_map, backend=backend))
        self._lms: dict[str, LM] = {}
        self._lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self.loads = 0  # how many loads ran (tests: once per model, however many visitors)

    def check(self, name: Any) -> str:
        name = str(name or "").strip()
        if not name:
            raise ModelLoadError("no model chosen")
        if name not in self.allowed:
            raise ModelLoadError(f"model {name!r} is not on this app's allow-list ({', '.join(self.allowed)}); "
                                 "the operator adds models with --models or LABKIT_APP_MODELS")
        return name

    def loaded(self, name: str) -> bool:
        return name in self._lms

    def get(self, name: str) -> LM:
        name = self.check(name)
        with self._lock:
            lock = self._name_locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._lms:
                self.loads += 1
                self._lms[name] = self._loader(name)
            return self._lms[name]
