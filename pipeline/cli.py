"""featcache-extract: run foundation models over a dataset once and cache their features."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from featcache.cache_tools.cliutil import EXIT_OK, add_debug_flag, human_bytes, run_cli
from featcache.cache_tools.config import load_config

from .config import ExtractConfig

PROG = "featcache-extract"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("config", help="TOML config (see configs/); every key has a default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set output.store=stores/x.zarr --set views=4")
    p.add_argument("--add-teacher", action="store_true",
                   help="add the config's new teachers to an existing store (others stay untouched)")
    add_debug_flag(p)
    return p


def handle(args: argparse.Namespace) -> int:
    from .extract import run_extract

    cfg = load_config(ExtractConfig, args.config, args.overrides)
    s = run_extract(cfg, add_teacher=args.add_teacher)
    if s is not None:
        teachers = ", ".join(f"{name} ({dim})" for name, dim in s.teachers.items())
        print(f"store     {s.path} ({'complete' if s.complete else 'INCOMPLETE'}, {human_bytes(s.size_bytes)})")
        print(f"rows      {s.rows} ({s.valid_rows} valid)" + (f"; invalid inputs listed in {s.invalid_log}"
                                                              if s.invalid_log else ""))
        print(f"teachers  {teachers}")
        print(f"this run  {s.rows_done} rows in {s.seconds:.1f} s ({s.rows_per_second:.0f} rows/s)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, build_parser(), handle, argv)


if __name__ == "__main__":
    sys.exit(main())
