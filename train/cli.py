"""featcache-train: train students against a feature store.

    featcache-train CONFIG.toml [--set key=value ...] [--resume]     one run (AFT or a baseline)
    featcache-train sweep CONFIG.toml --grid KEY=V1,V2 [--grid ...]  every combination, one run dir each
    featcache-train compare RUNS_DIR [--choose] [--csv F] [--plot F.png]   mean ± std per method, error vs STL
    featcache-train probe CONFIG.toml                                linear probe of each teacher's features
    featcache-train tokt CONFIG.toml [--compare]                     task-oriented transfer (x methods x seeds)
    featcache-train predict RUN_DIR --source CONFIG.toml|PATH --out FILE.parquet|.csv [--eval]
    featcache-train export RUN_DIR --format onnx|torchscript|safetensors --out PATH
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from featcache.plumbing.cli import EXIT_DATA, EXIT_OK, add_debug_flag, add_ray_address_flag, run_cli
from featcache.plumbing import storage
from featcache.plumbing.config import load_config
from featcache.plumbing.errors import UsageError

from .config import TrainConfig

PROG = "featcache-train"
COMMANDS = ("sweep", "compare", "probe", "tokt", "predict", "export")
RUN_COMMANDS = ("predict", "export")  # commands on a finished run directory


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="TOML config (see configs/); every key has a default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set method.name=stl --set optim.epochs=3")


def _run_args(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("run_dir", help="a finished run directory (holding results.json), local or an fsspec URL")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    if command == "export":
        p.add_argument("--format", required=True, choices=("onnx", "torchscript", "safetensors"),
                       help="onnx (dynamic batch axis), torchscript (traced), safetensors (weights)")
        p.add_argument("--out", required=True, metavar="PATH", help="the exported file; its sidecar is PATH.json")
        return
    p.add_argument("--source", required=True, metavar="CONFIG.toml|PATH",
                   help="a config's [source] table, or a folder, .csv/.jsonl manifest, .tar shards, .parquet files")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="source.KEY=VALUE",
                   help="override a [source] key, e.g. --set source.split=test --set source.limit=100")
    p.add_argument("--out", metavar="FILE.parquet|.csv", help="one row per input")
    p.add_argument("--eval", action="store_true", help="print accuracy and per-class accuracy (a labeled source)")
    p.add_argument("--top-k", type=int, default=5, help="classes with probabilities per row (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default 64)")


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
    elif command in RUN_COMMANDS:
        _run_args(p, command)
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
        p.add_argument("--worker", metavar="I/N",
                       help="run only the I-th of N shares of the grid's runs (I from 0) into the shared --out, "
                            "one process per share under any scheduler")
        p.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this machine's processes (--jobs); ray: each run a Ray task with its own "
                            "resources (pip install 'featcache[ray]'), rerun by Ray if its worker is lost")
        add_ray_address_flag(p)
        p.add_argument("--ray-cpus", type=int, default=1, metavar="C",
                       help="with --engine ray: CPUs each run reserves and uses as threads (default 1)")
        p.add_argument("--ray-gpus", type=float, default=0, metavar="G",
                       help="with --engine ray: GPUs each run reserves (default 0; 0.5 packs two runs per GPU)")
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
        from featcache.plumbing.cli import parse_worker
        from .sweep import run_sweep
        if not args.grid:
            raise UsageError("sweep: give at least one --grid KEY=V1,V2,...")
        if args.jobs < 1:
            raise UsageError("--jobs: must be >= 1")
        try:
            then_seeds = [int(x) for x in args.then_seeds.split(",") if x.strip()]
        except ValueError as exc:
            raise UsageError(f"--then-seeds {args.then_seeds!r}: expected seeds like 1,2") from exc
        worker = parse_worker(args.worker) if args.worker is not None else None
        res = run_sweep(args.config, args.overrides, args.grid, jobs=args.jobs, root=args.out, dry_run=args.dry_run,
                        then_seeds=then_seeds, worker=worker, engine=_sweep_engine(args))
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
    if command in RUN_COMMANDS:
        return _handle_run(command, args)
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


def _sweep_engine(args: argparse.Namespace):
    """None for this machine's processes; for ``--engine ray``, the runs' Ray tasks (ray imported
    only when they start)."""
    if args.engine != "ray":
        if args.address is not None or args.ray_cpus != 1 or args.ray_gpus:
            raise UsageError("--address, --ray-cpus, --ray-gpus: only with --engine ray")
        return None
    if args.jobs > 1 or args.worker is not None:
        raise UsageError("--engine ray places the runs itself: drop --jobs / --worker")
    from .sweep_ray import ray_engine
    return ray_engine(args.address, args.ray_cpus, args.ray_gpus)


def _handle_run(command: str, args: argparse.Namespace) -> int:
    import os

    from featcache.plumbing.cli import human_bytes

    if args.out and os.path.exists(args.out) and not args.overwrite:
        raise FileExistsError(f"{args.out}: exists (add --overwrite)")
    if command == "export":
        from .export import export_student
        side = export_student(args.run_dir, args.format, args.out, overwrite=True)
        size = human_bytes(os.path.getsize(args.out))
        print(f"export: {args.format} -> {args.out} ({size}), sidecar {args.out}.json")
        check = side.get("check") or {}
        if check:
            print(f"onnx: {check['runtime']} vs torch on {check['rows']} random inputs: max |diff| "
                  f"{check['max_abs_diff']:.2e}")
        return EXIT_OK
    from .prediction import predict
    if not (args.out or args.eval):
        raise UsageError("predict: give --out FILE.parquet|.csv, --eval, or both")
    if args.out and not args.out.endswith((".parquet", ".csv")):
        raise UsageError(f"--out {args.out}: write .parquet or .csv")
    table = predict(args.run_dir, args.source, overrides=args.overrides, top_k=args.top_k, batch_size=args.batch_size)
    if args.out:
        table.write(args.out)
    print(f"predict: {len(table.rows)} rows ({table.invalid} did not decode)" + (f" -> {args.out}" if args.out else ""))
    if args.eval:
        if table.accuracy is None:
            raise UsageError(f"--eval: {args.source} holds no labels of the run's classes")
        print(table.summary())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else None
    return run_cli(PROG if command is None else f"{PROG} {command}", build_parser(command),
                   lambda args: handle(command, args), argv)


if __name__ == "__main__":
    sys.exit(main())
