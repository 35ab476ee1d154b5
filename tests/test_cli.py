"""The command line: clear one-line errors with exit code 2, and real runs on a tiny saved model."""
import json

import pytest

from labkit.cli import main


@pytest.mark.parametrize("argv, msg", [
    (["run", "--method", "nope", "--prompt", "hi"], "unknown method 'nope'"),
    (["run", "--prompt", "   "], "the prompt is empty"),
    (["run", "--prompt", "hi", "--param", "k=100"], "out of range"),
    (["run", "--prompt", "hi", "--param", "bogus=1"], "unknown parameter 'bogus'"),
    (["run", "--prompt", "hi", "--param", "k"], "expected name=value"),
    (["run", "--prompt", "hi", "--model", "./no/such/dir"], "does not exist"),
    (["bench", "--methods", "nope"], "unknown method"),
    (["bench", "--categories", "poetry"], "unknown category"),
])
def test_bad_input_is_one_line_exit_2(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("labkit: error:") and msg in err and "\n" not in err


def test_prompt_longer_than_context(tiny_dir, capsys):
    long = " ".join(["w3"] * 1100)
    assert main(["run", "--model", tiny_dir, "--prompt", long, "--no-chat", "--max-new-tokens", "4"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err


def test_run_streams_and_writes_trace(tiny_dir, tmp_path, capsys):
    trace = tmp_path / "out.jsonl"
    rc = main(["run", "--model", tiny_dir, "--method", "token_recycling", "--prompt", "w1 w2 w3 w1 w2",
               "--no-chat", "--max-new-tokens", "24", "--trace", str(trace), "--color"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tok/s" in out and "mean acceptance length" in out
    lines = trace.read_text().splitlines()
    assert json.loads(lines[0])["config"]["method"] == "token_recycling"
    assert len(lines) >= 3


def test_run_sampling(tiny_dir, capsys):
    assert main(["run", "--model", tiny_dir, "--method", "draft_model", "--prompt", "w1 w2", "--no-chat",
                 "--max-new-tokens", "10", "--sample", "--temperature", "0.9", "--top-p", "0.9"]) == 0


def test_methods_lists_registry(capsys):
    from labkit.methods import REGISTRY

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out
    assert "lossless" in out and "paper:" in out


def test_check_command(tiny_dir, capsys):
    assert main(["check", "--model", tiny_dir, "--method", "token_recycling", "--prompt", "w4 w5 w6",
                 "--no-chat", "--max-new-tokens", "16"]) == 0
    assert "identical" in capsys.readouterr().out


def test_no_escape_codes_off_a_terminal_or_with_no_color(tiny_dir, capsys, monkeypatch):
    argv = ["run", "--model", tiny_dir, "--prompt", "w1 w2 w1 w2", "--no-chat", "--max-new-tokens", "8"]
    assert main(argv) == 0  # pytest's captured stdout is not a terminal
    assert "\033[" not in capsys.readouterr().out
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    assert main(argv) == 0
    assert "\033[" not in capsys.readouterr().out


def test_run_json_reads_the_prompt_from_stdin(tiny_dir, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("w1 w2 w3 w1 w2"))
    assert main(["run", "--model", tiny_dir, "--prompt", "-", "--no-chat", "--max-new-tokens", "8", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prompt"] == "w1 w2 w3 w1 w2" and len(doc["tokens"]) == doc["metrics"]["new_tokens"] == 8


def test_methods_and_check_json(tiny_dir, capsys):
    from labkit.methods import REGISTRY

    assert main(["methods", "--json"]) == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == list(REGISTRY)
    assert main(["check", "--model", tiny_dir, "--method", "prompt_lookup", "--prompt", "w1 w2 w1", "--no-chat",
                 "--max-new-tokens", "6", "--json"]) == 0
    [rec] = json.loads(capsys.readouterr().out)
    assert rec["method"] == "prompt_lookup" and rec["identical"] is True


def test_version_and_python_dash_m():
    import subprocess
    import sys

    from labkit import __version__

    out = subprocess.run([sys.executable, "-m", "labkit", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"labkit {__version__}"


def test_app_subcommand_passes_its_options_on(capsys):
    with pytest.raises(SystemExit) as e:
        main(["app", "--help"])
    assert e.value.code == 0 and "--device-map" in capsys.readouterr().out
    assert main(["app", "--concurrency", "-1", "--port", "1"]) == 2
    assert "concurrency must be at least 1" in capsys.readouterr().err


def test_a_missing_extra_is_one_line(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["app", "--help"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "labkit: error: labkit app needs gradio: pip install 'labkit-decoding[app]'"
