"""labkit's Gradio app (a module-level `demo`, as in Gradio's demo folders); the layout lives in
`labkit/app/ui.py` so an installed package runs it too (`labkit app`).

    python app.py                                  # http://127.0.0.1:7860, the embedded SmolLM2
    python app.py --port 8080 --host 0.0.0.0 --concurrency 2
    python app.py --models smollm2-135m,/models/my-llama      # a private deployment's allow-list
"""
import sys

from labkit.extras import MissingExtra

try:
    from labkit.app.ui import APP, CONFIG, demo, launch, main  # noqa: F401
except MissingExtra as e:  # gradio not installed: one line, not a traceback
    sys.exit(f"app.py: error: {e}")

if __name__ == "__main__":
    sys.exit(main(prog="python app.py"))
