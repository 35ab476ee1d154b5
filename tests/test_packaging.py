"""What a new user installs: pyproject's declared dependencies match the code, the core stays light, the
conda environment file asks for what pyproject needs. (The wheel in a fresh virtual environment is checked by
scripts/check_wheel.sh: it needs the network.)"""
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_installed_environment_meets_every_declared_floor():
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    reqs += [Requirement(r) for extra in ("app", "notebook", "gemma") for r in PROJECT["optional-dependencies"][extra]]
    for req in reqs:
        version = metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), f"{req.name} {version} does not meet {req}"


def test_all_is_every_extra_and_test_includes_all():
    name = PROJECT["name"]
    assert name != "labkit"  # the name on PyPI belongs to an unrelated project
    assert PROJECT["optional-dependencies"]["all"] == [f"{name}[app,notebook,gemma]"]
    assert f"{name}[all]" in PROJECT["optional-dependencies"]["test"]


def test_the_core_imports_no_optional_package():
    code = ("import sys; import labkit.cli as c; c.build_parser(); from labkit import Session, views, bench, "
            "trace, timeline; import labkit.check, labkit.sparsity; "
            "print(sorted(m for m in ('gradio', 'ipywidgets', 'pandas', 'IPython', 'anywidget', 'resource', "
            "'jupyterlab') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_a_missing_extra_is_one_line_with_the_install_command(monkeypatch):
    from labkit.extras import MissingExtra, require

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now fails
    with pytest.raises(MissingExtra, match=r"^the labkit app needs gradio: pip install 'labkit-decoding\[app\]'$"):
        require("gradio", "app", "the labkit app")


def test_environment_yml_builds_from_conda_forge_what_pyproject_needs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"][0] == "conda-forge" and "pytorch" not in env["channels"]
    deps = env["dependencies"]
    torch_floor = next(str(Requirement(r).specifier) for r in PROJECT["dependencies"] if r.startswith("torch"))
    assert f"pytorch{torch_floor}" in deps and "cpuonly" not in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip == ["-e .[all]"]
