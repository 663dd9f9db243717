"""What every featcache command shares: one-line errors, exit codes, sizes."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Sequence

from .errors import DataError, UsageError
from .storage import access_errors

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, (UsageError, FileNotFoundError, FileExistsError,
                        IsADirectoryError, NotADirectoryError, ValueError, KeyError, *access_errors())):
        return EXIT_USAGE
    return EXIT_DATA


def run_cli(prog: str, parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int],
            argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn user-facing errors into one line on stderr (traceback with --debug)."""
    args = parser.parse_args(argv)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader has what it wanted; no error, no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (DataError, UsageError, OSError, ValueError, KeyError, *access_errors()) as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{prog}: error: {message}", file=sys.stderr)
        return exit_code_for(exc)
    except Exception as exc:  # a bug, not a user mistake: still one line unless --debug
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_DATA


def add_debug_flag(parser: argparse.ArgumentParser, default: object = False) -> None:
    """``--debug`` anywhere on the line; sub-commands pass SUPPRESS so they do not reset it."""
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback on errors")
