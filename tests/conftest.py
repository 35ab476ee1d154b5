import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core (pytest-xdist): each worker keeps to one OpenMP thread, or
    # their threads fight over the cores (up to 10x slower on a 2-core machine).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


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
def tiny_dir(tmp_path_factory):
    """A tiny random-init Llama saved to a folder, for code that loads models by path (CLI, bench)."""
    from labkit import testing

    lm = testing.tiny_lm("llama")
    d = tmp_path_factory.mktemp("tiny")
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct in fp32 (converted from GGUF on first use, then cached)."""
    from labkit.models import load

    return load("smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture
def one_thread():
    """Toy tensors: OpenMP threads only add contention (up to 10x slower on a loaded 2-core machine).
    Modules that work on toy vocabularies use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
