"""Gradio components whose values reach the handlers unchecked.

Gradio checks a value against its component's range or choices before a handler runs and prints a traceback
for every refusal (an API caller's bad value fills the log), and the browser clamps a typed number into a
slider's range without a word. These template components (the stock ones in the browser) pass the value
through; the handlers (`labkit.app.validate`, the allow-list, the registry) refuse it in one line, in the tab's
status. (Gradio writes a typing stub, components.pyi, beside this file when the classes are defined.)
"""
from __future__ import annotations

import gradio as gr


class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return payload


class Number(gr.Number):
    is_template = True

    def preprocess(self, payload):
        return payload


class Dropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):
        return payload


class Radio(gr.Radio):
    is_template = True

    def preprocess(self, payload):
        return payload


class CheckboxGroup(gr.CheckboxGroup):
    is_template = True

    def preprocess(self, payload):
        return payload


def max_new_box(value: int, hi: int, elem_id: str, lo: int = 1, label: str = "Max new tokens"):
    """A number box, not a slider: a typed 0 or 100000 is refused in one line instead of clamped in silence."""
    return Number(value=value, precision=0, label=f"{label} ({lo} to {hi})", elem_id=elem_id)
