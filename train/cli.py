"""featcache-train: train students against a feature store.

    featcache-train CONFIG.toml [--set key=value ...] [--resume]     one run (AFT or a baseline)
    featcache-train sweep CONFIG.toml --grid KEY=V1,V2 [--grid ...]  every combination, one run dir each
    featcache-train compare RUNS_DIR [--choose] [--csv F] [--plot F.png]   mean ± std per method, error vs STL
    featcache-train probe CONFIG.toml                                linear probe of each teacher's features
    featcache-train tokt CONFIG.toml [--compare]                     task-oriented transfer (x methods x seeds)
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from featcache.plumbing.cli import EXIT_DATA, EXIT_OK, add_debug_flag, run_cli
from featcache.plumbing import storage
from featcache.plumbing.config import load_config
from featcache.plumbing.errors import UsageError

from .config import TrainConfig

PROG = "featcache-train"
COMMANDS = ("sweep", "compare", "probe", "tokt")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="TOML config (see configs/); every key has a default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set method.name=stl --set optim.epochs=3")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    prog = f"{PROG} {command}" if command else PROG
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if command == "compare":
        p.add_argument("runs_dir", help="a directory of finished runs (a sweep's, or any)")
        p.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
        p.add_argument("--plot", metavar="PNG", help="bar chart with error bars (needs matplotlib)")
        p.add_argument("--choose", action="store_true",
                       help="per method, only the grid point ([method] and [optim] keys) with the best mean "
                            "validation accuracy, with the grid it was chosen from")
    else:
        _config_args(p)
    if command is None:
        p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its checkpoint")
    if command == "sweep":
        p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="a swept key: method=stl,aft  seed=0,1,2  aft.beta=1,10  optim.lr=1e-3,3e-3")
        p.add_argument("--jobs", type=int, default=1, help="runs at a time (threads are split between them)")
        p.add_argument("--out", help="runs directory (default: the config's out_dir)")
        p.add_argument("--dry-run", action="store_true", help="list the runs and whether they are done")
        p.add_argument("--then-seeds", default="", metavar="S1,S2",
                       help="after the grid, each method's point chosen on validation runs again with these "
                            "seeds (tune on the config's seed, measure on more)")
    if command == "tokt":
        p.add_argument("--compare", action="store_true", help="every [tokt] method x seed, then the table")
    storage.add_flag(p)
    add_debug_flag(p)
    return p


def handle(command: str | None, args: argparse.Namespace) -> int:
    storage.use_flags(args)
    if command is None:
        from .loop import run
        run(load_config(TrainConfig, args.config, args.overrides), resume=args.resume)  # run registers [data.storage]
        return EXIT_OK
    if command == "sweep":
        from .sweep import run_sweep
        if not args.grid:
            raise UsageError("sweep: give at least one --grid KEY=V1,V2,...")
        if args.jobs < 1:
            raise UsageError("--jobs: must be >= 1")
        try:
            then_seeds = [int(x) for x in args.then_seeds.split(",") if x.strip()]
        except ValueError as exc:
            raise UsageError(f"--then-seeds {args.then_seeds!r}: expected seeds like 1,2") from exc
        res = run_sweep(args.config, args.overrides, args.grid, jobs=args.jobs, root=args.out, dry_run=args.dry_run,
                        then_seeds=then_seeds)
        if not args.dry_run:
            print(f"table: {PROG} compare {res['root']}")
        return EXIT_DATA if res["failed"] else EXIT_OK
    if command == "compare":
        from .compare import choose_on_validation, markdown, markdown_chosen, plot, summarize, write_csv
        records = summarize(args.runs_dir)
        if args.choose:
            records = choose_on_validation(records)
        print(markdown_chosen(records) if args.choose else markdown(records))
        if args.csv:
            write_csv(records, args.csv)
        if args.plot:
            plot(records, args.plot, title=args.runs_dir)
        return EXIT_OK
    if command == "probe":
        from .probe import probe_teachers
        cfg = load_config(TrainConfig, args.config, args.overrides)
        storage.set_options(cfg.data.storage)
        probe_teachers(cfg)
        return EXIT_OK
    from .tokt import ToktConfig, compare, run_tokt
    cfg = load_config(ToktConfig, args.config, args.overrides)
    storage.set_options(cfg.data.storage)
    if args.compare:
        compare(cfg)
        return EXIT_OK
    res = run_tokt(cfg)
    print(f"tokt: test accuracy {res['test_accuracy']:.4f} (after step 2 alone: "
          f"{res['pretrain_test_accuracy']:.4f}) -> {cfg.out_dir}/results.json")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else None
    return run_cli(PROG if command is None else f"{PROG} {command}", build_parser(command),
                   lambda args: handle(command, args), argv)


if __name__ == "__main__":
    sys.exit(main())
