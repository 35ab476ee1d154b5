"""The Gradio app's layout: watch fast decoding happen, live, side by side, step by step.

    labkit app                                     # http://127.0.0.1:7860, the embedded SmolLM2 (or: python app.py)
    labkit app --port 8080 --host 0.0.0.0 --concurrency 2
    labkit app --models smollm2-135m,/models/my-llama      # a private deployment's allow-list

The repository's `app.py` re-exports this module's `demo` (Gradio's demo-folder convention); the package carries
the layout so an installed wheel runs the app too. This module is layout only; the logic (validation, per-visitor state, shared models, streaming handlers) is in
`labkit/app/` (one module per tab). Nothing heavy happens at import: models load on the first request that needs them.
"""
from __future__ import annotations

import argparse
import html
import math
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from labkit.extras import require  # noqa: E402

gr = require("gradio", "app", "the labkit app")
import pandas as pd  # noqa: E402

from labkit.app import (  # noqa: E402
    App, AppConfig, BASELINE, BENCH_HEADERS, bench_table, collect_params, COMPARE_COLUMNS, DECISION_HEADERS,
    ExplorerUpdate, MAX_COMPARE, method_card, method_label, method_names, methods, MODES, param_layout, ParamError,
    policy_param_layout,
    UNCHANGED, Visitor,
)
from labkit.app.components import CheckboxGroup, Dropdown, Number, Radio, Slider, max_new_box  # noqa: E402
from labkit.bench import CATEGORIES  # noqa: E402

# System fonts only: the default themes load Google Fonts, and the app must work offline.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])
CSS = """
#lk-live-stream, .lk-col-stream { min-height: 6em; max-height: 28em; overflow-y: auto; padding: 6px 8px;
  border: 1px solid var(--border-color-primary); border-radius: 6px; background: var(--background-fill-secondary); }
.lk-status p { margin: 0; }
#lk-trace-error p, .lk-status .lk-err { color: var(--error-text-color, #b91c1c); font-weight: 600; }
.lk-status { min-height: 4.2em; }  /* room for Gradio's "queue: 2/3" badge and spinner, drawn over the status line */
/* Dark theme (?__theme=dark): the figures are drawn once on the server in plotly_white, so the page recolours
   what the template painted (backgrounds, default text, grid) and the near-black lines; the data colours
   (Okabe-Ito, chosen to read on both) stay. */
.dark .js-plotly-plot .main-svg { background: transparent !important; }
.dark .js-plotly-plot rect.bg { fill: transparent !important; }
.dark .js-plotly-plot text[style*="fill: rgb(42, 63, 95)"], .dark .js-plotly-plot text[style*="fill: rgb(68, 68, 68)"],
.dark .js-plotly-plot text[style*="fill: rgb(17, 17, 17)"], .dark .js-plotly-plot text[style*="fill: rgb(34, 34, 34)"]
  { fill: #e5e7eb !important; }
.dark .js-plotly-plot .gridlayer path, .dark .js-plotly-plot .zerolinelayer path,
.dark .js-plotly-plot .crisp[style*="stroke: rgb(235, 240, 248)"] { stroke: rgba(255, 255, 255, 0.14) !important; }
.dark .js-plotly-plot path[style*="stroke: rgb(34, 34, 34)"], .dark .js-plotly-plot path[style*="stroke: rgb(17, 17, 17)"]
  { stroke: #d1d5db !important; }
.dark .js-plotly-plot path[style*="fill: rgb(34, 34, 34)"], .dark .js-plotly-plot path[style*="fill: rgb(17, 17, 17)"]
  { fill: #d1d5db !important; }
"""

DEFAULT_PROMPT = "Explain in a few sentences why the sky is blue."
# the methods' own example prompts (where each one's drafts shine) first, then two plain ones
EXAMPLES = list(dict.fromkeys([*(methods.get(n).example for n in method_names()), DEFAULT_PROMPT,
                               "Write a short Python function that checks whether a number is prime."]))
INTRO = ("# labkit: watch fast decoding happen\n"
         "Instrumented speculative decoders on a real causal LM. Every round the method drafts a tree of tokens, "
         "the target verifies the whole tree in one forward pass, and the accepted path plus one bonus token are "
         "committed. In the token stream, **green** = draft tokens the target accepted, **blue** = the bonus token "
         "the target picked itself after each verify pass, **grey** = plain one-token-per-forward decoding.")


def _v(x):
    """A handler field -> a component value (UNCHANGED leaves the component as it is)."""
    return gr.skip() if x is UNCHANGED else x


def _status(u) -> str:
    if u.error:  # red (.lk-err), in the tab's status line
        return f'<span class="lk-err">⚠ {html.escape(u.error, quote=False)}</span>'
    return u.status


def _float_step(lo: float, hi: float, default) -> float:
    """A round slider step (about 1/100 of the range) on whose grid the default value lies."""
    step = 10.0 ** math.floor(math.log10((hi - lo) / 100)) if hi > lo else 0.01
    while step > 1e-6 and isinstance(default, (int, float)) and abs(round((default - lo) / step) * step + lo
                                                                  - default) > step * 1e-6:
        step /= 10
    return step


# The Live tab is for watching trees: on a CPU, Token Recycling's hardware-aware sizing (sizing=auto, the
# library default) drafts little or nothing until its matrix is warm, so a first visitor would see no tree.
# Live starts it on a fixed 16-node tree with the matrix pre-filled from the prompt (prompt_rows) instead;
# sizing=auto is one click away. Compare keeps the library defaults, since it reports speed.
LIVE_DEFAULTS = {"token_recycling": {"sizing": "off", "nodes": 16, "prompt_rows": True}}


def _param_component(prefix: str, method: str, p: dict, defaults: dict | None = None):
    label = f"{p['name']}"
    info = p["help"] or None
    lo, hi = p["lo"], p["hi"]
    default = (defaults or {}).get(method, {}).get(p["name"], p["default"])
    elem_id = f"lk-{prefix}-param-{method}-{p['name']}"  # ids are unique on the page: Live and Compare differ
    if p["choices"] is not None:
        return Dropdown(choices=list(p["choices"]), value=default, label=label, info=info, elem_id=elem_id)
    if p["type"] == "bool":
        return gr.Checkbox(value=bool(default), label=label, info=info, elem_id=elem_id)
    if p["type"] in ("int", "float"):
        if lo is not None and hi is not None and (p["type"] == "float" or hi - lo <= 4096):
            step = 1 if p["type"] == "int" else _float_step(lo, hi, default)
            return Slider(lo, hi, value=default, step=step, label=label, info=info, elem_id=elem_id)
        rng = f" (≥ {lo})" if lo is not None else (f" (≤ {hi})" if hi is not None else "")
        return Number(value=default, label=label + rng, info=info, precision=0 if p["type"] == "int" else None,
                         elem_id=elem_id)
    return gr.Textbox(value="" if default is None else str(default), label=label, info=info, elem_id=elem_id)


def _param_forms(prefix: str, layout, visible: set[str]):
    """One group of parameter inputs per registered method (generated from methods.info, so new methods appear
    automatically). Returns (flat list of components, {method: group})."""
    comps, groups = [], {}
    by_method: dict[str, list[dict]] = {}
    for m, p in layout:
        by_method.setdefault(m, []).append(p)
    for m, ps in by_method.items():
        with gr.Group(visible=m in visible) as g:
            if prefix == "compare":
                gr.Markdown(f"**{m}**")
            for p in ps:
                comps.append(_param_component(prefix, m, p, LIVE_DEFAULTS if prefix == "live" else None))
        groups[m] = g
    return comps, groups


def _sampling_controls(prefix: str):
    mode = Radio(list(MODES), value="greedy", label="Decoding", elem_id=f"lk-{prefix}-mode",
                    info="greedy: outputs must be token-identical for lossless methods")
    with gr.Row(visible=False) as row:
        temperature = Slider(0.05, 2.0, value=0.8, step=0.05, label="temperature")
        top_k = Number(value=0, precision=0, label="top_k (0 = off)")
        top_p = Slider(0.01, 1.0, value=1.0, step=0.01, label="top_p")
    seed = Number(value=0, precision=0, label="seed", visible=False)
    chat = gr.Checkbox(value=True, label="chat template", info="wrap the prompt as a user turn when the model has one")
    mode.change(lambda m: (gr.update(visible=m == "sampling"), gr.update(visible=m == "sampling")), mode, [row, seed],
                queue=False, show_progress="hidden", api_visibility="private")
    return mode, temperature, top_k, top_p, seed, chat


def build(app: App) -> gr.Blocks:
    cfg = app.config
    names = method_names()
    labels = [(method_label(n), n) for n in names]
    default_method = "token_recycling" if "token_recycling" in names else names[0]
    layout = param_layout()
    keys = [(m, p["name"]) for m, p in layout]
    compare_default = [n for n in ("prompt_lookup", "token_recycling") if n in names] or names[:2]
    models_choices = list(cfg.models)
    light = dict(concurrency_limit=None, show_progress="hidden")
    heavy = dict(concurrency_id="model", concurrency_limit=cfg.concurrency)

    # delete_cache: files Gradio served (trace downloads, uploads) are removed after two hours
    with gr.Blocks(title="labkit: watch fast decoding happen", analytics_enabled=False,
                   delete_cache=(3600, 7200)) as demo:
        state = gr.State(Visitor)
        gr.Markdown(INTRO)
        with gr.Tabs():
            # ---------------------------------------------------------------- Live
            with gr.Tab("Live", id="live"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        prompt = gr.Textbox(value=methods.get(default_method).example, label="Prompt", lines=3,
                                            max_lines=12, elem_id="lk-live-prompt")
                        with gr.Row():
                            run = gr.Button("Generate", variant="primary", elem_id="lk-live-run")
                            stop = gr.Button("Stop", variant="stop", elem_id="lk-live-stop")
                        model = Dropdown(models_choices, value=cfg.default_model, label="Model (allow-list)",
                                            elem_id="lk-live-model")
                        method = Dropdown(labels, value=default_method, label="Method", elem_id="lk-live-method")
                        card = gr.Markdown(method_card(default_method), elem_id="lk-live-card")
                        with gr.Accordion("Method parameters", open=True):
                            live_params, live_groups = _param_forms("live", layout, {default_method})
                        max_new = max_new_box(cfg.default_new_tokens, cfg.max_new_tokens, "lk-live-max-new")
                        mode, temperature, top_k, top_p, seed, chat = _sampling_controls("live")
                        gr.Examples(EXAMPLES, [prompt], label="Example prompts")
                    with gr.Column(scale=3, min_width=420):
                        status = gr.Markdown("Ready. Generation streams here; the model loads on the first run.",
                                             elem_id="lk-live-status", elem_classes="lk-status")
                        live_metrics = gr.Markdown(elem_id="lk-live-metrics")
                        stream = gr.HTML(elem_id="lk-live-stream", label="Token stream")
                        tree = gr.Plot(label="Draft tree of the current step", elem_id="lk-live-tree")
                        l_step = Slider(0, 1, value=0, step=1, visible=False, elem_id="lk-live-step",
                                        label="Step (after the run: scrub through its rounds' trees)")
                        stats = gr.Plot(label="Acceptance", elem_id="lk-live-stats")
                        with gr.Accordion("Plain text", open=False):
                            text = gr.Textbox(show_label=False, lines=6, elem_id="lk-live-text")

            # ---------------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        c_prompt = gr.Textbox(value=DEFAULT_PROMPT, label="Prompt", lines=3, max_lines=12,
                                              elem_id="lk-compare-prompt")
                        with gr.Row():
                            c_run = gr.Button("Compare", variant="primary", elem_id="lk-compare-run")
                            c_stop = gr.Button("Stop", variant="stop", elem_id="lk-compare-stop")
                        c_model = Dropdown(models_choices, value=cfg.default_model, label="Model (allow-list)")
                        c_methods = Dropdown(labels, value=compare_default, multiselect=True,
                                                max_choices=MAX_COMPARE, elem_id="lk-compare-methods",
                                                label=f"Methods (2 to {MAX_COMPARE}; the autoregressive baseline "
                                                      "always runs)")
                        with gr.Accordion("Parameters of the picked methods", open=False):
                            c_params, c_groups = _param_forms("compare", layout, set(compare_default))
                        c_max_new = max_new_box(min(48, cfg.max_new_tokens), cfg.max_new_tokens, "lk-compare-max-new")
                        c_mode, c_temp, c_topk, c_topp, c_seed, c_chat = _sampling_controls("compare")
                    with gr.Column(scale=3, min_width=420):
                        c_status = gr.Markdown("Pick methods and press Compare.", elem_id="lk-compare-status",
                                               elem_classes="lk-status")
                        c_verdict = gr.Markdown(elem_id="lk-compare-verdict")
                        c_plot = gr.Plot(label="Side by side", elem_id="lk-compare-plot")
                c_cols, c_titles, c_streams, c_metrics = [], [], [], []
                with gr.Row(equal_height=False):
                    for i in range(COMPARE_COLUMNS):
                        with gr.Column(visible=False, min_width=220) as col:
                            c_titles.append(gr.Markdown(elem_id=f"lk-compare-title-{i}"))
                            c_metrics.append(gr.Markdown(elem_id=f"lk-compare-metrics-{i}"))
                            c_streams.append(gr.HTML(elem_id=f"lk-compare-stream-{i}", elem_classes="lk-col-stream"))
                        c_cols.append(col)

            # ---------------------------------------------------------------- Trace explorer
            with gr.Tab("Trace explorer", id="trace") as trace_tab:
                with gr.Row():
                    with gr.Column(scale=3):
                        x_runs = Dropdown([], label="Run (this session's runs and uploads)", elem_id="lk-trace-run",
                                             interactive=True)
                        x_msg = gr.Markdown("No runs yet: generate in Live or Compare, or upload a trace (.jsonl).",
                                            elem_id="lk-trace-msg")
                        x_err = gr.Markdown(elem_id="lk-trace-error")
                    with gr.Column(scale=2):
                        x_upload = gr.File(label="Upload a trace (JSON lines from `labkit run --trace`)",
                                           type="filepath", elem_id="lk-trace-upload", height=120)
                        x_download = gr.DownloadButton("Download this trace (.jsonl)", value=None,
                                                       elem_id="lk-trace-download")
                x_step = Slider(0, 1, value=0, step=1, label="Step", elem_id="lk-trace-step")
                x_summary = gr.Markdown(elem_id="lk-trace-summary")
                x_tree = gr.Plot(label="Draft tree and decisions", elem_id="lk-trace-tree")
                x_table = gr.Dataframe(headers=DECISION_HEADERS, label="Decisions (one row per draft node)",
                                       wrap=True, interactive=False, elem_id="lk-trace-decisions")
                x_mask = gr.Plot(label="Tree attention mask of the verify pass", elem_id="lk-trace-mask")
                x_state_plot = gr.Plot(label="Method state", elem_id="lk-trace-state-plot")
                x_sparse = gr.Plot(label="KV policy at this step: attention by layer and position", visible=False,
                                   elem_id="lk-trace-sparsity")
                with gr.Accordion("Step.state as JSON (what the method's state did this round)", open=False):
                    x_state = gr.JSON(show_label=False)

            # ---------------------------------------------------------------- Sparsity
            with gr.Tab("Sparsity", id="sparsity"):
                policies = app.sparsity_policies()
                policy_layout = policy_param_layout()
                policy_keys = [(m, p["name"]) for m, p in policy_layout]
                engine_methods = [x for x in labels if not methods.get(x[1]).custom_loop]
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        s_prompt = gr.Textbox(value=DEFAULT_PROMPT, label="Prompt", lines=3, elem_id="lk-sparsity-prompt")
                        with gr.Row():
                            s_run = gr.Button("Run", variant="primary", elem_id="lk-sparsity-run")
                            s_stop = gr.Button("Stop", variant="stop", elem_id="lk-sparsity-stop")
                        s_model = Dropdown(models_choices, value=cfg.default_model, label="Model (allow-list)")
                        default_policy = policies[min(1, len(policies) - 1)][1]
                        s_policy = Dropdown(policies, value=default_policy, label="KV policy",
                                            elem_id="lk-sparsity-policy")
                        s_budget = Slider(4, 1024, value=48, step=4, label="KV budget (committed entries read)",
                                             info="per layer or KV head, depending on the policy; dense ignores it",
                                             elem_id="lk-sparsity-budget")
                        with gr.Accordion("Policy parameters", open=False):
                            s_params, s_groups = _param_forms("sparsity", policy_layout, {default_policy})
                        s_method = Dropdown(engine_methods, value=BASELINE, label="Decoding method")
                        s_max_new = max_new_box(min(48, cfg.max_new_tokens), cfg.max_new_tokens, "lk-sparsity-max-new")
                        s_chat = gr.Checkbox(value=True, label="chat template")
                    with gr.Column(scale=3, min_width=420):
                        s_status = gr.Markdown(elem_id="lk-sparsity-status", elem_classes="lk-status")
                        s_metrics = gr.Markdown(elem_id="lk-sparsity-metrics")
                        s_stream = gr.HTML(elem_id="lk-sparsity-stream", elem_classes="lk-col-stream")
                s_heat = gr.Plot(label="Attention by layer and position (latest step)", elem_id="lk-sparsity-heat")
                with gr.Row():
                    s_timeline = gr.Plot(label="Cache residency timeline", elem_id="lk-sparsity-timeline")
                    s_fid = gr.Plot(label="Fidelity vs dense: recall, KL, top-1 agreement",
                                    elem_id="lk-sparsity-fidelity")

            # ---------------------------------------------------------------- Bench
            with gr.Tab("Bench", id="bench"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        b_model = Dropdown(models_choices, value=cfg.default_model, label="Model (allow-list)")
                        b_methods = Dropdown([x for x in labels if x[1] != BASELINE], value=compare_default,
                                                multiselect=True, elem_id="lk-bench-methods",
                                                label="Methods (the autoregressive baseline always runs)")
                        b_cats = CheckboxGroup(list(CATEGORIES), value=["mt_bench", "summarization", "qa"],
                                                  label="Spec-Bench categories")
                        b_n = Slider(1, cfg.bench_max_per_category, value=1, step=1, label="Questions per category")
                        b_max_new = max_new_box(min(48, cfg.bench_max_new_tokens), cfg.bench_max_new_tokens, "lk-bench-max-new", lo=8,
                                             label="Max new tokens per answer")
                        with gr.Row():
                            b_run = gr.Button("Run benchmark", variant="primary", elem_id="lk-bench-run")
                            b_stop = gr.Button("Stop", variant="stop")
                    with gr.Column(scale=3, min_width=420):
                        b_status = gr.Markdown("Greedy, interleaved question by question; speedups are ratios "
                                               "measured in this run.", elem_classes="lk-status",
                                               elem_id="lk-bench-status")
                        b_table = gr.Dataframe(headers=BENCH_HEADERS, label="Results", interactive=False, wrap=True,
                                               column_widths=["15%", "21%", "11%", "9%", "9%", "10%", "11%", "14%"],
                                               elem_id="lk-bench-table")
                        b_plot = gr.Plot(label="Speedup and acceptance length per category", elem_id="lk-bench-plot")

        # ======================================================================== events
        def arm(visitor):
            """Runs before a job is queued: a fresh stop flag, and the previous run's message cleared at once."""
            visitor.arm()
            return visitor, "queued… (while others' runs go first, your place in the queue shows on the right)"

        def request_stop(visitor):
            # said at once in the tab's status; the run itself ends after the round in progress
            return "stopping… (after the round in progress)" if visitor.request_stop() else gr.skip()

        # -- Live
        def on_method(name, current):
            # a prompt the visitor has not edited follows the method to the method's own example
            try:
                example = methods.get(name).example if str(current or "").strip() in EXAMPLES else None
            except ParamError:
                example = None
            return [gr.update(visible=m == name) for m in live_groups] + [method_card(name)] + \
                [gr.update(value=example) if example else gr.skip()]

        method.change(on_method, [method, prompt], list(live_groups.values()) + [card, prompt], queue=False,
                      show_progress="hidden", api_visibility="private")

        def live_fn(visitor, model, method, prompt, max_new, mode, temperature, top_k, top_p, seed, chat, *pvals):
            params = collect_params(pvals, keys).get(method, {})
            for u in app.live(visitor, model, method, prompt, max_new, mode, temperature, top_k, top_p, seed, params,
                              chat):
                if u.error:
                    gr.Warning(u.error)
                scrub = (gr.update(visible=True, minimum=0, maximum=max(1, u.steps - 1), value=max(0, u.shown),
                                   interactive=u.steps > 1) if u.done and u.steps else gr.update(visible=False))
                yield visitor, _status(u), _v(u.metrics), _v(u.html), _v(u.tree), _v(u.stats), _v(u.text), scrub

        live_inputs = [state, model, method, prompt, max_new, mode, temperature, top_k, top_p, seed, chat, *live_params]
        live_outputs = [state, status, live_metrics, stream, tree, stats, text, l_step]
        explorer_outputs = [x_runs, x_step, x_msg, x_err, x_summary, x_tree, x_mask, x_table, x_state_plot, x_state,
                            x_download, x_sparse]

        def explorer_fn(visitor, key=None, index=None):
            return _explorer_values(app.explorer(visitor, key, index))

        live_ev = run.click(arm, state, [state, status], queue=False, show_progress="hidden", api_visibility="private").then(
            live_fn, live_inputs, live_outputs, api_name="live", show_progress_on=[status], **heavy)
        live_ev.then(explorer_fn, state, explorer_outputs, api_visibility="private", **light)
        l_step.input(app.live_step, [state, l_step], tree, api_visibility="private", trigger_mode="always_last",
                     **light)
        stop.click(request_stop, state, status, queue=False, show_progress="hidden", api_visibility="private")

        # -- Compare
        c_groups_with_params = {m: g for m, g in c_groups.items()}

        def on_compare_methods(selected):
            return [gr.update(visible=m in (selected or [])) for m in c_groups_with_params]

        c_methods.change(on_compare_methods, c_methods, list(c_groups_with_params.values()), queue=False,
                         show_progress="hidden", api_visibility="private")

        def compare_fn(visitor, model, picked, prompt, max_new, mode, temperature, top_k, top_p, seed, chat, *pvals):
            by_method = collect_params(pvals, keys)
            for u in app.compare(visitor, model, picked, prompt, max_new, mode, temperature, top_k, top_p, seed,
                                 by_method, chat):
                if u.error:
                    gr.Warning(u.error)
                if u.columns is UNCHANGED:
                    cols = [gr.skip()] * (4 * COMPARE_COLUMNS)
                else:
                    cols = []
                    for c in u.columns:
                        cols.append(gr.update(visible=c is not None))
                    for c in u.columns:
                        cols += ([c.title, c.metrics, c.html] if c is not None else ["", "", ""])
                yield (visitor, _status(u), _v(u.verdict), _v(u.plot), *cols)

        compare_inputs = [state, c_model, c_methods, c_prompt, c_max_new, c_mode, c_temp, c_topk, c_topp, c_seed,
                          c_chat, *c_params]
        col_outputs = list(c_cols)
        for i in range(COMPARE_COLUMNS):
            col_outputs += [c_titles[i], c_metrics[i], c_streams[i]]
        compare_ev = c_run.click(arm, state, [state, c_status], queue=False, show_progress="hidden", api_visibility="private").then(
            compare_fn, compare_inputs, [state, c_status, c_verdict, c_plot, *col_outputs], api_name="compare",
            show_progress_on=[c_status], **heavy)
        compare_ev.then(explorer_fn, state, explorer_outputs, api_visibility="private", **light)
        c_stop.click(request_stop, state, c_status, queue=False, show_progress="hidden", api_visibility="private")

        # -- Trace explorer
        trace_tab.select(explorer_fn, state, explorer_outputs, api_visibility="private", **light)
        x_runs.input(lambda v, k: explorer_fn(v, k, None), [state, x_runs], explorer_outputs,
                     api_visibility="private", **light)
        x_step.input(lambda v, k, i: explorer_fn(v, k, i), [state, x_runs, x_step], explorer_outputs,
                     api_visibility="private", trigger_mode="always_last", **light)

        def upload_fn(visitor, path):
            up = app.upload(visitor, path)
            if up.error:
                gr.Warning(up.error)
            return _explorer_values(up) + [None]

        x_upload.upload(upload_fn, [state, x_upload], explorer_outputs + [x_upload], api_name="upload_trace", **light)

        # -- Sparsity
        s_policy.change(lambda name: [gr.update(visible=m == name) for m in s_groups], s_policy,
                        list(s_groups.values()), queue=False, show_progress="hidden", api_visibility="private")

        def sparsity_fn(visitor, model, policy, budget, prompt, max_new, method, chat, *pvals):
            params = collect_params(pvals, policy_keys).get(policy, {})
            for u in app.sparsity(visitor, model, policy, budget, prompt, max_new, method, chat, params):
                if u.error:
                    gr.Warning(u.error)
                yield (visitor, _status(u), _v(u.metrics), _v(u.html), _v(u.heatmap), _v(u.timeline),
                       _v(u.fidelity))

        s_ev = s_run.click(arm, state, [state, s_status], queue=False, show_progress="hidden", api_visibility="private").then(
            sparsity_fn, [state, s_model, s_policy, s_budget, s_prompt, s_max_new, s_method, s_chat, *s_params],
            [state, s_status, s_metrics, s_stream, s_heat, s_timeline, s_fid], api_name="sparsity",
            show_progress_on=[s_status], **heavy)
        s_ev.then(explorer_fn, state, explorer_outputs, api_visibility="private", **light)
        s_stop.click(request_stop, state, s_status, queue=False, show_progress="hidden", api_visibility="private")

        # -- Bench
        def bench_fn(visitor, model, picked, cats, n, max_new, progress=gr.Progress()):
            for u in app.bench(visitor, model, picked, cats, n, max_new,
                               progress=lambda frac, desc: progress(frac, desc=desc)):
                if u.error:
                    gr.Warning(u.error)
                table = gr.skip() if u.rows is UNCHANGED else pd.DataFrame(bench_table(u.rows),
                                                                             columns=BENCH_HEADERS)
                yield visitor, _status(u), table, _v(u.plot)

        b_run.click(arm, state, [state, b_status], queue=False, show_progress="hidden", api_visibility="private").then(
            bench_fn, [state, b_model, b_methods, b_cats, b_n, b_max_new],
            [state, b_status, b_table, b_plot], api_name="bench", **heavy)
        b_stop.click(request_stop, state, b_status, queue=False, show_progress="hidden", api_visibility="private")

    demo.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.max_queue)
    return demo


def _explorer_values(up: ExplorerUpdate) -> list:
    v = up.view
    table = pd.DataFrame(v.decisions, columns=DECISION_HEADERS)
    err = up.error or v.error
    return [gr.update(choices=up.choices, value=up.selected),
            gr.update(minimum=0, maximum=max(up.max_step, 1), value=up.step, interactive=up.max_step > 0),
            up.message, f"⚠ {err}" if err else "", v.summary, v.tree, v.mask, table, v.state_plot, v.state,
            gr.update(value=up.download, interactive=up.download is not None),
            gr.update(value=v.sparsity, visible=v.sparsity is not None)]


CONFIG = AppConfig.from_env()
APP = App(CONFIG)
demo = build(APP)


def launch(blocks: gr.Blocks | None = None, config: AppConfig | None = None, **kwargs):
    """Launch with the app's theme (system fonts), CSS and limits; kwargs go to `Blocks.launch`."""
    cfg = config or CONFIG
    opts = dict(theme=THEME, css=CSS, max_file_size=f"{cfg.max_upload_mb:g}mb", footer_links=["api"],
                run_history=False, show_error=False)
    opts.update(kwargs)
    return (blocks or demo).launch(**opts)


def main(argv=None, prog: str = "labkit app") -> int:
    global CONFIG, APP, demo
    ap = argparse.ArgumentParser(prog=prog, description="labkit's Gradio app")
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                    help="interface to listen on (0.0.0.0 for a LAN/public deployment)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    ap.add_argument("--models", default=None,
                    help="comma-separated allow-list of models visitors may pick (default: the embedded models, "
                         "or LABKIT_APP_MODELS); the first one is the default. trust_remote_code is never enabled")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="generations running at once (default: 2 on a CPU, 1 on an accelerator, so visitors' "
                         "speed numbers do not skew each other)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="upper limit visitors can ask for (default 256)")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: the accelerator if any)")
    ap.add_argument("--device-map", default=None, metavar="MAP",
                    help="auto: spread each model over every device (accelerate), for models larger than one GPU")
    ap.add_argument("--backend", default=None, choices=("auto", "fast", "stock"),
                    help="execution path of every model: fast = oneDNN linears over weights packed once (CPU), "
                         "stock = stock PyTorch kernels; auto (default) = fast on CPU, stock on GPU")
    args = ap.parse_args(argv)
    overrides = dict(models=tuple(args.models.split(",")) if args.models else None, concurrency=args.concurrency,
                     max_new_tokens=args.max_new_tokens, dtype=args.dtype, device=args.device, device_map=args.device_map,
                     backend=args.backend)
    try:
        cfg = AppConfig.from_env(**overrides)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if cfg != CONFIG:
        CONFIG, APP = cfg, App(cfg)
        demo = build(APP)
    print(f"labkit app: models {', '.join(cfg.models)} (default {cfg.default_model}); "
          f"{cfg.concurrency} generation(s) at once; backend {cfg.backend}", flush=True)
    launch(demo, cfg, server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
