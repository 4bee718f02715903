"""The one top-level handler of the ``hub_scripts`` commands: an expected error ends the command with one line.

Every command's ``if __name__ == "__main__"`` is ``sys.exit(run_cli(main))``. An error prints
``<command>: error: <message>`` on stderr, with no traceback, and the exit status says what kind it was:

- 2: the input is wrong (an argument, a path, a file's contents): ``ValueError`` (``UnicodeDecodeError`` and the
  publishing checks included), ``TypeError``, ``LookupError``, a missing / wrong kind of path, an existing output;
- 1: anything else (disk full, the Hub refusing, a crash), the message prefixed by the error's type when it is
  not one of ours;
- 130: interrupted (Ctrl-C).

``--debug`` on the command line (taken out before the command parses its arguments, unless a value follows it:
train.py's ``--debug underflow_overflow`` is TrainingArguments') or the environment variable ``CCR_DEBUG=1``
shows the full traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEBUG_FLAG = "--debug"
DEBUG_ENV = "CCR_DEBUG"

# Errors that mean "the input is wrong": exit status 2, like argparse's usage errors.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, LookupError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
)


def _take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without a bare ``--debug`` (one followed by a value is the command's own: TrainingArguments'
    ``--debug underflow_overflow``), and whether the traceback was asked for."""
    kept, debug = [], os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")
    for index, arg in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else "--"
        if arg == DEBUG_FLAG and following.startswith("-"):
            debug = True
        else:
            kept.append(arg)
    return kept, debug


def error_line(error: BaseException) -> str:
    """One line that names the problem: the message, its first line when it is a list (the rest follows)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f" while writing {error.filename}" if error.filename else ""
        return (f"no space left on device{where}: free some space or choose another output folder "
                "(nothing half-written was kept)")
    message = str(error).strip() or type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    if not _expected(error):
        message = f"{type(error).__name__}: {message}"
    return message


def _expected(error: BaseException) -> bool:
    """An error whose message is meant for the user: bad input, a system error, or one of this package's."""
    return isinstance(error, (OSError, *INPUT_ERRORS)) or type(error).__module__.split(".")[0] == "modeling_ccr"


def exit_code(error: BaseException) -> int:
    """2 for input errors, 1 otherwise (see the module docstring)."""
    return 2 if isinstance(error, INPUT_ERRORS) else 1


def run_cli(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``main(argv)`` and return the exit status; expected errors become one line on stderr.

    ``main`` returns an exit status (None counts as 0); ``SystemExit`` (argparse's usage errors, ``--help``)
    passes through unchanged.
    """
    argv, debug = _take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    code = getattr(main, "__code__", None)
    prog = prog or Path(code.co_filename if code is not None else sys.argv[0] or "command").name
    try:
        status = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into an exit status
        if debug:
            traceback.print_exc()
        else:
            lines = str(error).strip().splitlines()
            rest = "\n".join(lines[1:]) if len(lines) > 1 and not isinstance(error, OSError) else ""
            hint = "" if _expected(error) else f" (run with {DEBUG_FLAG} for the traceback)"
            print(f"{prog}: error: {error_line(error).splitlines()[0]}{hint}" + (f"\n{rest}" if rest else ""),
                  file=sys.stderr)
        return exit_code(error)
    return int(status or 0) if not isinstance(status, dict) else 0


def check_model_source(name: str) -> str:
    """``name`` if it can be a model to load: an existing folder with a config.json, or a Hub id.

    A path that clearly means a local folder (starts with ``.`` or ``/``, or has more than one ``/``) but does not
    exist, or a file, fails here, before anything is loaded.
    """
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"model {name} is a file, not a model folder")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {name} has no config.json (not a saved model folder)")
        return name
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name and name.count("/") != 1:
        raise FileNotFoundError(f"model folder {name} does not exist")
    return name


def check_positive(**values: int | float | None) -> None:
    """Raise ValueError naming the first option that is given but not > 0 (``--batch-size 0``)."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
