"""The app's layout (labkit/app/ui.py, re-exported by app.py): builds without loading a model, pickers and forms
come from the method registry, offline theme."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def appmod():
    from labkit.app import ui

    return ui


def test_app_py_is_the_packaged_layout(appmod):
    sys.path.insert(0, str(ROOT))
    try:
        import app
    finally:
        sys.path.remove(str(ROOT))
    assert app.demo is appmod.demo


def _components(demo, cls):
    return [b for b in demo.blocks.values() if isinstance(b, cls)]


def test_import_is_light(appmod):
    import gradio as gr

    assert isinstance(appmod.demo, gr.Blocks)
    assert appmod.APP.pool.loads == 0  # nothing loaded until a visitor asks
    assert appmod.demo._queue.default_concurrency_limit == appmod.CONFIG.concurrency


def test_pickers_and_forms_come_from_the_registry(appmod):
    import gradio as gr

    from labkit.app import MAX_COMPARE, param_layout
    from labkit import methods

    method_dd = next(b for b in _components(appmod.demo, gr.Dropdown) if b.elem_id == "lk-live-method")
    assert [v for _, v in method_dd.choices] == list(methods.REGISTRY)
    for label, name in method_dd.choices:
        assert ("LOSSY" in label) == (not methods.get(name).lossless)
        kind = methods.get(name).kind
        assert kind == "speculative" or kind in label
    compare = next(b for b in _components(appmod.demo, gr.Dropdown) if b.elem_id == "lk-compare-methods")
    assert compare.multiselect and compare.max_choices == MAX_COMPARE
    assert [v for _, v in compare.choices] == list(methods.REGISTRY)
    all_ids = [b.elem_id for b in appmod.demo.blocks.values() if getattr(b, "elem_id", None)]
    assert sorted(i for i in set(all_ids) if all_ids.count(i) > 1) == []  # an id names one element
    for name, p in param_layout():  # one input per parameter of every registered method, in both tabs
        assert {f"lk-live-param-{name}-{p['name']}", f"lk-compare-param-{name}-{p['name']}"} <= set(all_ids)


def test_models_picker_is_the_allow_list(appmod):
    import gradio as gr

    dd = next(b for b in _components(appmod.demo, gr.Dropdown) if b.elem_id == "lk-live-model")
    assert [v for _, v in dd.choices] == list(appmod.CONFIG.models)


def test_theme_uses_no_web_fonts(appmod):
    import gradio as gr

    fonts = list(appmod.THEME._font) + list(appmod.THEME._font_mono)
    assert not any(isinstance(f, gr.themes.GoogleFont) for f in fonts)
    assert "googleapis" not in (appmod.THEME._font_css or "")


def test_cli_rejects_a_bad_allow_list(appmod, capsys):
    assert appmod.main(["--models", " , "]) == 2
    assert "allow-list is empty" in capsys.readouterr().err
