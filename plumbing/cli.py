"""What every featcache command shares: one-line errors, exit codes, sizes."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Sequence

from .errors import DataError, UsageError
from .storage import access_errors

# The exit-code table (docs/ mirrors it; tests/test_exit_codes.py runs every code through every script):
#   0    ok
#   1    data or store problem: a DataError (a store damaged, incomplete, or with the wrong fingerprint; a
#        teacher or input set the store does not hold; an input that does not decode; a checkpoint or
#        weights file that does not load), a permission or credential error, any other I/O failure
#   2    usage or config mistake: a UsageError (ConfigError, a bad --set, SourceError, TeacherError), a
#        path the user named that does not exist or is the wrong kind (config, store, runs directory),
#        a destination that already exists, a bad command line (argparse)
#   3    internal error: any other exception, a bug in featcache (one line; --debug shows the traceback)
#   130  interrupted (Ctrl-C)
EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
MISSING_PATH = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def exit_code_for(exc: BaseException) -> int:
    """The table above, first match wins: access, then named paths, then the two base classes."""
    if isinstance(exc, (PermissionError, *access_errors())):
        return EXIT_DATA
    if isinstance(exc, (UsageError, *MISSING_PATH)):
        return EXIT_USAGE
    if isinstance(exc, (DataError, OSError)):
        return EXIT_DATA
    return EXIT_INTERNAL


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "(no message)"


def run_cli(prog: str, parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int],
            argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn every error into one line on stderr and an exit code (traceback with --debug)."""
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `... | head`: the reader has what it wanted; no error, no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if debug:
            traceback.print_exc()
        code = exit_code_for(exc)
        if code == EXIT_INTERNAL:  # a bug, not a user mistake: still one line unless --debug
            print(f"{prog}: internal error: {type(exc).__name__}: {_one_line(exc)} "
                  "(rerun with --debug for the traceback)", file=sys.stderr)
        else:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
        return code


def parse_worker(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; a UsageError (exit 2) otherwise."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--worker {text!r}: expected I/N, e.g. 0/3 (I counts from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--worker {text}: I must be in 0..N-1 (I counts from 0), got I={i}, N={n}")
    return i, n


def add_debug_flag(parser: argparse.ArgumentParser, default: object = False) -> None:
    """``--debug`` anywhere on the line; sub-commands pass SUPPRESS so they do not reset it."""
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback on errors")


def add_ray_address_flag(p: argparse.ArgumentParser) -> None:
    """``--address``: the same door to a Ray cluster for both stages' ``--engine ray``."""
    p.add_argument("--address", metavar="ADDR",
                   help="with --engine ray: the cluster to join (HOST:PORT, ray://HOST:PORT); default "
                        "RAY_ADDRESS (set under ray job submit), else a new local Ray instance")
