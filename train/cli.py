"""featcache-train: train a student against a feature store (AFT and baselines)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from featcache.cache_tools.cliutil import EXIT_OK, add_debug_flag, run_cli
from featcache.cache_tools.config import load_config

from .config import TrainConfig

PROG = "featcache-train"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("config", help="TOML config (see configs/); every key has a default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set method.name=stl --set optim.epochs=3")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    add_debug_flag(p)
    return p


def handle(args: argparse.Namespace) -> int:
    from .loop import run

    cfg = load_config(TrainConfig, args.config, args.overrides)
    run(cfg, resume=args.resume)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, build_parser(), handle, argv)


if __name__ == "__main__":
    sys.exit(main())
