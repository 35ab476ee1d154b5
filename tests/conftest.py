import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    """Tiny random-init models by architecture, built once per test session."""
    from labkit import testing

    cache = {}

    def get(arch="llama", **kw):
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = testing.tiny_lm(arch, **kw)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct in fp32 (converted from GGUF on first use, then cached)."""
    from labkit.models import load

    return load("smollm2-135m", dtype="float32", device="cpu")
