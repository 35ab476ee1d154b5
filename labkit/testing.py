"""Tiny random-init models for tests and teaching: built from a config in well under a second.

Weights use a large init scale so logits are peaked (no near-ties that would make exact greedy
comparisons depend on float rounding), and a small vocabulary so random text repeats (drafts get accepted).
"""
from __future__ import annotations

import torch

from .models import LM

ARCHS = ("llama", "qwen2", "gemma3")


def tiny_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0")


def tiny_config(arch: str = "llama", *, vocab: int = 32, layers: int = 2, hidden: int = 64,
                sliding_window: int = 12):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  initializer_range=0.3, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                  pad_token_id=0)
    if arch == "llama":
        return AutoConfig.for_model("llama", **common)
    if arch == "qwen2":
        return AutoConfig.for_model("qwen2", **common)
    if arch == "gemma3":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        return AutoConfig.for_model("gemma3_text", **common, head_dim=hidden // 4, sliding_window=sliding_window,
                                    layer_types=types, query_pre_attn_scalar=hidden // 4)
    if arch == "bloom":  # ALiBi: no position ids, so no tree verification (not in ARCHS; a refusal test uses it)
        return AutoConfig.for_model("bloom", vocab_size=vocab, hidden_size=hidden, n_layer=layers, n_head=4,
                                    initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    raise ValueError(f"unknown tiny arch {arch!r}; use one of {ARCHS}")


def flat_curve():
    """A latency curve on which every draft pays (a verify pass over 81 tokens costs what one token does): tests
    hand it to a method's sizer (`sizer.use_curve`) so that whether it drafts does not hang on a measured curve."""
    from .latency import LatencyCurve

    return LatencyCurve(tokens=(1, 81), seconds=(0.010, 0.0101))


def tiny_lm(arch: str = "llama", *, seed: int = 0, backend: str = "stock", **kw) -> LM:
    """A tiny random-init model of `arch` on the execution path `backend` (see labkit.backends)."""
    from transformers import AutoModelForCausalLM

    from . import backends

    cfg = tiny_config(arch, **kw)
    torch.manual_seed(seed)
    attn = "eager" if arch == "bloom" else "sdpa"  # BLOOM has no SDPA path in transformers
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation=attn).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    backends.apply(model, backend)
    return LM(model=model, tokenizer=tiny_tokenizer(cfg.vocab_size), name=f"tiny-{arch}", source="random init")


# ---- distribution tests on toy vocabularies ----------------------------------------------------------------

def toy_dist(seed: int, v: int, peaked: float = 1.0) -> torch.Tensor:
    """A random distribution over `v` tokens (softmax of scaled Gaussian logits), reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(v, generator=g) * peaked, -1)


def chi2_pvalue(samples, p: torch.Tensor) -> float:
    """Chi-square goodness of fit of integer `samples` against distribution `p` (`teaching.chi_square`). A sample
    of a token that `p` gives (numerically) zero probability fails at once."""
    from .teaching import chi_square

    counts = torch.bincount(torch.as_tensor(samples, dtype=torch.long), minlength=len(p)).tolist()
    expected = p.double().cpu().tolist()
    assert not any(c and e <= 1e-9 for c, e in zip(counts, expected)), \
        "sampled a token the distribution gives zero probability"
    return chi_square(counts, [e if e > 1e-9 else 0.0 for e in expected])[1]


def hold_in_another_thread(gate, exclusive: bool = True):
    """For tests of a shared model: another thread takes `gate` (shared or exclusive) and keeps it until the
    returned function is called (it releases and joins). Returns once the other thread holds it."""
    import threading

    held, release = threading.Event(), threading.Event()

    def other():
        with gate.exclusive() if exclusive else gate.shared():
            held.set()
            release.wait()

    t = threading.Thread(target=other)
    t.start()
    held.wait()

    def done() -> None:
        release.set()
        t.join()

    return done
