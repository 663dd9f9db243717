"""featcache-train: train students against a feature store.

    featcache-train CONFIG.toml [--set key=value ...] [--resume]   one run (AFT or a baseline)
    featcache-train tokt CONFIG.toml [--set ...]                   task-oriented transfer, three steps
    featcache-train compare CONFIG.toml [--set ...]                every method x seed, one table
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from featcache.cache_tools.cliutil import EXIT_OK, add_debug_flag, run_cli
from featcache.cache_tools.config import load_config

from .config import TrainConfig

PROG = "featcache-train"
COMMANDS = ("tokt", "compare")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    prog = f"{PROG} {command}" if command else PROG
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="TOML config (see configs/); every key has a default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set method.name=stl --set optim.epochs=3")
    if command is None:
        p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its checkpoint")
    add_debug_flag(p)
    return p


def handle(command: str | None, args: argparse.Namespace) -> int:
    if command is None:
        from .loop import run
        run(load_config(TrainConfig, args.config, args.overrides), resume=args.resume)
        return EXIT_OK
    from .tokt import ToktConfig, compare, run_tokt
    cfg = load_config(ToktConfig, args.config, args.overrides)
    if command == "tokt":
        res = run_tokt(cfg)
        print(f"tokt: test accuracy {res['test_accuracy']:.4f} (after step 2 alone: "
              f"{res['pretrain_test_accuracy']:.4f}) -> {cfg.out_dir}/results.json")
    else:
        compare(cfg)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else None
    return run_cli(PROG if command is None else f"{PROG} {command}", build_parser(command),
                   lambda args: handle(command, args), argv)


if __name__ == "__main__":
    sys.exit(main())
