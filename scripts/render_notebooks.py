"""Execute the teaching notebooks and write static HTML copies next to the docs (docs/notebooks/).

    python scripts/render_notebooks.py [NOTEBOOK ...]      (default: every notebooks/*.ipynb)

Each copy is what the notebook printed on this machine, figures included, readable without Jupyter. Nothing loads
from a CDN: plotly.js is written once beside the pages (plotly.min.js, from the installed plotly package) and each
page refers to it instead of inlining it, as it does to the template's style sheet (notebook.css); live widgets (LiveView), which need a running kernel, are replaced by a
note pointing at the static snapshot the notebook shows after them. One torch thread, like the notebook test.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "notebooks"
WIDGET = "application/vnd.jupyter.widget-view+json"
# the plotly.js bundle the first figure of a notebook inlines (plotly's "notebook" renderer)
INLINE_PLOTLY = re.compile(r"<script[^>]*>/\*\*\s*\n\* plotly\.js v.*?</script>", re.S)


def execute(path: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ.update(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory() as cwd:
        NotebookClient(nb, timeout=900, kernel_name="python3", store_widget_state=False,
                       resources={"metadata": {"path": cwd}}).execute()
    return nb


def static(nb):
    """Drop widget outputs (blank without a kernel) for a one-line note."""
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if WIDGET in o.get("data", {}):
                o["data"] = {"text/plain": "[a live widget: it needs a running kernel; the next cell shows a static "
                                           "snapshot of what it drew]"}
    return nb


def to_html(nb) -> str:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    # the template's require.js and MathJax come from CDNs; the notebooks need neither (no LaTeX, and plotly.js
    # sets window.Plotly only when no AMD loader is present)
    body = re.sub(r"<script[^>]*src=[\"']https://cdnjs\.cloudflare\.com/ajax/libs/(require\.js|mathjax)/[^>]*>\s*</script>",
                  "", body)
    body, n = INLINE_PLOTLY.subn('<script src="plotly.min.js"></script>', body, count=1)
    if n != 1 and "Plotly.newPlot" in body:
        raise RuntimeError("could not find the inlined plotly.js to replace")
    if re.search(r"<script[^>]*src=[\"']https?:", body):
        raise RuntimeError("the page would load a script from the network")
    return body


def share_styles(body: str) -> tuple[str, str]:
    """The template's style sheets (the same for every page, ~260 kB) moved out of the page's <head> into one
    shared notebook.css; styles inside cell outputs (e.g. a pandas table's) stay where they are."""
    head_end = body.index("</head>")
    head = body[:head_end]
    css = "\n".join(m.group(1) for m in re.finditer(r"<style[^>]*>(.*?)</style>", head, re.S))
    head = re.sub(r"<style[^>]*>.*?</style>\s*", "", head, flags=re.S)
    return head + '<link rel="stylesheet" href="notebook.css">\n' + body[head_end:], css


def main(argv: list[str]) -> int:
    import plotly

    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", OUT / "plotly.min.js")
    for path in paths:
        t0 = time.time()
        html, css = share_styles(to_html(static(execute(path))))
        shared = OUT / "notebook.css"
        if not shared.exists() or shared.read_text(encoding="utf-8") != css:
            shared.write_text(css, encoding="utf-8")  # the same for every page of one nbconvert version
        target = OUT / (path.stem + ".html")
        tmp = target.with_suffix(".html.tmp")
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(target)  # never a half-written page
        print(f"{target.relative_to(ROOT)}: {len(html) / 1e6:.1f} MB in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
