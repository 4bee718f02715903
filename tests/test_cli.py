"""modeling_ccr.cli.run_cli: the commands' one top-level handler (exit status, one line, --debug)."""

from __future__ import annotations

import errno

import pytest

from modeling_ccr.cli import check_model_source, run_cli
from modeling_ccr.trainer import NonFiniteLossError


def _raiser(error: BaseException):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize(("error", "status", "line"), [
    (ValueError("--k must be > 0, got 0"), 2, "prog: error: --k must be > 0, got 0"),
    (FileNotFoundError("index folder x does not exist"), 2, "prog: error: index folder x does not exist"),
    (OSError(errno.ENOSPC, "No space left on device", "out/model.safetensors"), 1,
     "prog: error: no space left on device while writing out/model.safetensors"),
    (NonFiniteLossError("the training loss became nan at step 3"), 1, "prog: error: the training loss became nan"),
    (RuntimeError("CUDA out of memory"), 1, "prog: error: RuntimeError: CUDA out of memory (run with --debug"),
])
def test_errors_end_with_one_line_and_their_status(capsys, error, status, line):
    assert run_cli(_raiser(error), [], prog="prog") == status
    err = capsys.readouterr().err
    assert err.startswith(line) and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_list_message_keeps_its_items_below_the_line(capsys):
    assert run_cli(_raiser(ValueError("folder is incomplete:\n  - a\n  - b")), [], prog="p") == 2
    assert capsys.readouterr().err.splitlines() == ["p: error: folder is incomplete:", "  - a", "  - b"]


def test_debug_flag_or_env_shows_the_traceback_and_is_not_passed_on(capsys, monkeypatch):
    seen = []

    def main(argv):
        seen.append(argv)
        raise ValueError("bad")

    assert run_cli(main, ["x", "--debug"], prog="p") == 2
    assert seen[-1] == ["x"] and "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("CCR_DEBUG", "1")
    assert run_cli(main, ["y"], prog="p") == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("CCR_DEBUG")
    # TrainingArguments has its own --debug VALUE: it goes through untouched, without a traceback.
    assert run_cli(main, ["--debug", "underflow_overflow"], prog="p") == 2
    assert seen[-1] == ["--debug", "underflow_overflow"] and "Traceback" not in capsys.readouterr().err


def test_success_and_usage_exits_pass_through():
    assert run_cli(lambda argv: 0, []) == 0 and run_cli(lambda argv: {"ok": 1}, []) == 0
    with pytest.raises(SystemExit):
        run_cli(lambda argv: (_ for _ in ()).throw(SystemExit(2)), [])


def test_check_model_source(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert check_model_source(str(tmp_path / "m")) == str(tmp_path / "m")
    assert check_model_source("user/model") == "user/model"  # a Hub id: left to from_pretrained
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model_source(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        check_model_source(str(tmp_path))
