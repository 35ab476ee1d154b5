"""End to end in headless Chromium: `python app.py` on the embedded SmolLM2, driven like a visitor would.

Runs a Live generation (streamed text, draft-tree plot), stops a second one, runs a Compare, uploads a bad
trace, checks an empty prompt's message, and fails on any request that leaves 127.0.0.1 (the app must work
offline). Screenshots go to /tmp/labkit_shots/ (LABKIT_SHOTS overrides).

Needs Debian's `chromium` (`apt-get install chromium`; `make test` installs it) and the `playwright` Python
package; never `playwright install`. Skipped with the reason when either is missing.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.xdist_group("browser")]  # one app, one page

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("LABKIT_SHOTS", "/tmp/labkit_shots"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium, or `make test` which installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed "
                                                             "(pip install playwright; never `playwright install`)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "LABKIT_APP_MAX_NEW_TOKENS": "128",
           "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--host", "127.0.0.1"], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"app.py did not answer in 180 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    text = log.read_text()
    assert "Traceback" not in text, text[-4000:]


@pytest.fixture(scope="module")
def page(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.external = []
        pg.console_errors = []

        def on_request(req):
            host = urlparse(req.url).hostname
            if req.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
                return
            pg.external.append(req.url)

        pg.on("request", on_request)
        pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
        pg.goto(server)
        pg.wait_for_selector("#lk-live-run", timeout=60_000)
        yield pg
        browser.close()


def _text(page, sel: str) -> str:
    loc = page.locator(sel)
    return loc.inner_text() if loc.count() else ""


def _wait_text(page, sel: str, pattern: str, timeout: float = 150) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        t = _text(page, sel)
        if re.search(pattern, t):
            return t
        time.sleep(0.2)
    raise AssertionError(f"{sel} never matched {pattern!r}; it says {_text(page, sel)!r}")


def _set_slider(page, sel: str, value: int) -> None:
    box = page.locator(f"{sel} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_page_loads_offline(page):
    assert "labkit" in page.title()
    page.screenshot(path=str(SHOTS / "00_loaded.png"), full_page=True)
    assert page.locator("#lk-live-method").count() == 1
    assert not page.external, f"requests left 127.0.0.1: {page.external}"


def test_empty_prompt_is_a_clear_message(page):
    _tab(page, "Live")
    page.fill("#lk-live-prompt textarea", "   ")
    page.click("#lk-live-run")
    _wait_text(page, "#lk-live-status", r"the prompt is empty", timeout=60)
    page.screenshot(path=str(SHOTS / "01_empty_prompt.png"), full_page=True)


def test_live_streams_text_and_tree(page):
    _tab(page, "Live")
    page.fill("#lk-live-prompt textarea", "Explain in a few sentences why the sky is blue.")
    _set_slider(page, "#lk-live-max-new", 32)
    # Record every length the streamed text takes, in the page itself: polling from here can miss a short
    # generation when the app and Chromium share two busy cores.
    page.evaluate("""() => {
        const el = document.querySelector('#lk-live-stream');
        window.__lkLens = [];
        new MutationObserver(() => window.__lkLens.push(el.innerText.length))
            .observe(el, {childList: true, subtree: true, characterData: true});
    }""")
    page.click("#lk-live-run")
    status = _wait_text(page, "#lk-live-status", r"^(finished|stopped|⚠)", timeout=150)
    assert status.startswith("finished"), status
    stream = _text(page, "#lk-live-stream")
    assert len(stream.strip()) > 20, stream
    seen = set(page.evaluate("() => window.__lkLens"))
    assert len({n for n in seen if n > 0}) >= 2, f"the text did not stream (it arrived in one piece): {seen}"
    metrics = _text(page, "#lk-live-metrics")
    assert "tok/s" in metrics and "mean acceptance length" in metrics and "target forwards" in metrics
    page.wait_for_selector("#lk-live-tree .js-plotly-plot", timeout=30_000)
    assert page.locator("#lk-live-tree .js-plotly-plot").count() == 1
    _set_slider(page, "#lk-live-step", 1)  # scrub: the tree of round 1
    _wait_text(page, "#lk-live-tree", r"Step 1\b", timeout=30)
    page.screenshot(path=str(SHOTS / "02_live.png"), full_page=True)


def test_stop_works(page):
    _tab(page, "Live")
    page.fill("#lk-live-prompt textarea", "Write a long story about a lighthouse keeper and a storm.")
    _set_slider(page, "#lk-live-max-new", 128)
    page.click("#lk-live-run")
    _wait_text(page, "#lk-live-status", r"generating", timeout=60)
    page.click("#lk-live-stop")
    _wait_text(page, "#lk-live-status", r"^(stopping|stopped)", timeout=2)  # said at once
    status = _wait_text(page, "#lk-live-status", r"stopped|finished", timeout=60)
    assert status.startswith("stopped"), status
    assert len(_text(page, "#lk-live-stream").split()) < 110


def test_out_of_range_is_refused_in_one_line(page):
    _tab(page, "Live")
    _set_slider(page, "#lk-live-max-new", 0)  # a number box: the browser does not clamp it to 1
    page.click("#lk-live-run")
    status = _wait_text(page, "#lk-live-status", r"⚠", timeout=60)
    assert "max new tokens=0 is out of range" in status and "\n" not in status.strip(), status
    assert page.locator("#lk-live-status .lk-err").count() == 1  # red
    _set_slider(page, "#lk-live-max-new", 32)


def test_queue_position_is_shown(page, server):
    from gradio_client import Client

    # two long runs from other visitors fill the app's two generation slots
    def other_visitor():
        Client(server, verbose=False).predict(api_name="/live", method="autoregressive", max_new=96,
                                              prompt="Write a long story about a lighthouse keeper.")

    others = [threading.Thread(target=other_visitor, daemon=True) for _ in range(2)]
    for t in others:
        t.start()
    time.sleep(5)
    _tab(page, "Live")
    page.click("#lk-live-run")
    status = _wait_text(page, "#lk-live-status", r"queue: \d+/\d+", timeout=30)
    box = page.locator("#lk-live-status").bounding_box()
    badge = page.locator("#lk-live-status").get_by_text(re.compile(r"queue: \d+/\d+")).bounding_box()
    assert badge and box and badge["y"] + badge["height"] <= box["y"] + box["height"] + 1, (badge, box)  # not clipped
    page.screenshot(path=str(SHOTS / "02b_queued.png"), full_page=False)
    page.click("#lk-live-stop")
    status = _wait_text(page, "#lk-live-status", r"^stopped", timeout=240)
    assert status.startswith("stopped before it started"), status
    for t in others:
        t.join(240)


def test_compare_side_by_side(page):
    _tab(page, "Compare")
    page.fill("#lk-compare-prompt textarea", "Explain in a few sentences why the sky is blue.")
    _set_slider(page, "#lk-compare-max-new", 16)
    page.click("#lk-compare-run")
    _wait_text(page, "#lk-compare-status", r"^(done|stopped|⚠)", timeout=150)
    verdict = _text(page, "#lk-compare-verdict")
    assert verdict.count("identical") == 2 and "speedup" in verdict and "autoregressive" in verdict, verdict
    assert "expected" in verdict and "Execution path" in verdict, verdict  # the curve's prediction beside it
    plot = _text(page, "#lk-compare-plot")
    assert "identical outputs" in plot and "outputs differ" not in plot, plot  # the final figure agrees
    for i in range(3):
        assert len(_text(page, f"#lk-compare-stream-{i}").strip()) > 10
        assert "tok/s" in _text(page, f"#lk-compare-metrics-{i}")
    assert not page.locator("#lk-compare-stream-3").is_visible()
    page.wait_for_selector("#lk-compare-plot .js-plotly-plot", timeout=30_000)
    page.screenshot(path=str(SHOTS / "03_compare.png"), full_page=True)


def test_sparsity_with_a_policy_setting(page):
    """The Sparsity tab: pick RazorAttention, set its compensation in the policy form, run; the frames draw and
    the run records the setting."""
    _tab(page, "Sparsity")
    box = page.locator("#lk-sparsity-policy input")
    box.click()
    page.get_by_role("option", name=re.compile(r"^razor_attention")).click()
    page.get_by_text("Policy parameters").click()
    comp = page.locator("#lk-sparsity-param-razor_attention-compensation input")
    comp.wait_for(state="visible", timeout=10_000)
    assert not page.locator("#lk-sparsity-param-h2o-recent_ratio").is_visible()  # only the picked policy's form
    comp.click()
    page.get_by_role("option", name="count", exact=True).click()
    deadline = time.time() + 10
    while comp.input_value() != "count" and time.time() < deadline:
        time.sleep(0.1)
    assert comp.input_value() == "count"
    page.fill("#lk-sparsity-prompt textarea", "Explain in a few sentences why the sky is blue.")
    _set_slider(page, "#lk-sparsity-max-new", 12)
    _set_slider(page, "#lk-sparsity-budget", 16)
    page.click("#lk-sparsity-run")
    status = _wait_text(page, "#lk-sparsity-status", r"^(finished|stopped|ended|⚠)", timeout=150)
    assert status.startswith("finished"), status
    assert "compensation=count" in status or "compensation=count" in _text(page, "#lk-sparsity-metrics"), status
    page.wait_for_selector("#lk-sparsity-heat .js-plotly-plot", timeout=30_000)
    page.screenshot(path=str(SHOTS / "06_sparsity.png"), full_page=True)
    # the run lands in the trace explorer (the event's last step): wait for it, so later tests see it there
    _tab(page, "Trace explorer")
    deadline = time.time() + 30
    while "sparsity" not in page.locator("#lk-trace-run input").input_value() and time.time() < deadline:
        time.sleep(0.2)
    assert "sparsity: razor_attention" in page.locator("#lk-trace-run input").input_value()


def test_trace_explorer_and_bad_upload(page, tmp_path):
    _tab(page, "Trace explorer")
    _wait_text(page, "#lk-trace-msg", r"steps", timeout=30)
    before = page.locator("#lk-trace-run input").input_value()
    assert any(tab in before for tab in ("compare", "live", "sparsity"))  # the latest run of an earlier test
    assert "Step" in _text(page, "#lk-trace-summary")
    page.screenshot(path=str(SHOTS / "04_trace.png"), full_page=True)
    bad = tmp_path / "not_a_trace.jsonl"
    bad.write_text('{"hello": "world"}\n')
    page.set_input_files("#lk-trace-upload input[type=file]", str(bad))
    err = _wait_text(page, "#lk-trace-error", r"could not read the upload", timeout=30)
    assert "not a labkit trace" in err and "Traceback" not in err
    assert page.locator("#lk-trace-run input").input_value() == before  # the current run is still there
    assert "Step" in _text(page, "#lk-trace-summary")
    page.screenshot(path=str(SHOTS / "05_bad_trace.png"), full_page=True)


def test_no_request_left_localhost(page):
    assert not page.external, f"requests left 127.0.0.1: {page.external}"
