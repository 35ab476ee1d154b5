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


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "vocab_size": 10}')
    with pytest.raises(ModelLoadError):
        models.load(str(tmp_path))


def test_dtype_names():
    import torch

    assert models._pick_dtype(None, torch.device("cpu")) == torch.float32
    assert models._pick_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert models._pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        models._pick_dtype("int3", torch.device("cpu"))


@pytest.mark.integration
def test_embedded_smollm2_is_cached(smol):
    assert (models.cache_dir() / "models" / "smollm2-135m" / "model.safetensors").exists()
    assert smol.eos_ids and smol.max_length == 8192
