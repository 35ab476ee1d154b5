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
