"""featcache-extract: run foundation models over a dataset once and cache their features.

    featcache-extract CONFIG.toml [--set k=v ...] [--add-teacher] [--teachers A,B]   cache teacher features
    featcache-extract CONFIG.toml --index-only      the rows only (ids, labels, validity): an evaluation
                                                    split for stage 2, teachers can be added later
    featcache-extract CONFIG.toml --worker I/N      the I-th of N shares of the partitions (one task of
                                                    a SLURM array or an indexed Job), then exit
    featcache-extract CONFIG.toml --prepare         create the store and its index for the workers
    featcache-extract CONFIG.toml --engine ray [--address ADDR]   a pool of Ray actors (one per GPU)
                                                    takes the partitions as they free up
    featcache-extract finetune CONFIG.toml [--set k=v ...]          fine-tune a teacher with a task
                                                                    head, cache its logits (TOKT step 1)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING, Sequence

from featcache.plumbing.cli import EXIT_OK, add_debug_flag, add_ray_address_flag, human_bytes, run_cli
from featcache.plumbing import storage
from featcache.plumbing.config import load_config
from featcache.plumbing.errors import UsageError

from .config import ExtractConfig

if TYPE_CHECKING:
    from .outcome import Summary

PROG = "featcache-extract"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} {command}" if command else PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="TOML config (see configs/); every key has a default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set output.store=stores/x.zarr --set views=4")
    if command is None:
        p.add_argument("--add-teacher", action="store_true",
                       help="add the config's new teachers to an existing store (others stay untouched)")
        p.add_argument("--teachers", metavar="NAME[,NAME]",
                       help="run only these of the config's teachers (e.g. one cheap teacher for an eval store)")
        p.add_argument("--index-only", action="store_true",
                       help="write the rows (ids, labels, validity) and no teacher: a test split for stage 2, "
                            "which evaluates students on raw inputs; --add-teacher can add teachers later")
        p.add_argument("--worker", metavar="I/N",
                       help="extract the I-th of N shares of the partitions (I from 0) into the shared store "
                            "and exit; workers start, stop and rerun in any order, and need no process group")
        p.add_argument("--prepare", action="store_true",
                       help="only create (or check) the store, its teachers and the source's index, for "
                            "--worker processes to start on; without it the first worker does this")
        p.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process (default); ray: a pool of Ray actors (pip install 'featcache[ray]'), "
                            "the first up preparing the store, extracts the partitions, a lost one rerun by Ray")
        add_ray_address_flag(p)
        p.add_argument("--ray-workers", type=int, default=0, metavar="K",
                       help="with --engine ray: K actors (default one per GPU, else one per 4 CPUs)")
        p.add_argument("--ray-cpus", type=int, default=0, metavar="C",
                       help="with --engine ray: CPUs each actor reserves and uses (default 1 with GPUs, "
                            "else the cluster's CPUs / K, at most 4 when K is not given)")
    storage.add_flag(p)
    add_debug_flag(p)
    return p


def select_teachers(cfg: ExtractConfig, names: str | None, index_only: bool = False) -> ExtractConfig:
    if index_only:
        if names:
            raise UsageError("--index-only writes no teacher: drop --teachers")
        return dataclasses.replace(cfg, teachers=())
    if not names:
        return cfg
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = [t.name for t in cfg.teachers]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        missing = ", ".join(unknown) or repr(names)
        raise UsageError(f"--teachers: {missing} not in the config (it has {', '.join(known)})")
    return dataclasses.replace(cfg, teachers=tuple(t for t in cfg.teachers if t.name in wanted))


def handle(command: str | None, args: argparse.Namespace) -> int:
    storage.use_flags(args)
    if command == "finetune":
        from .finetune import FinetuneConfig, run_finetune
        run_finetune(load_config(FinetuneConfig, args.config, args.overrides))
        return EXIT_OK
    from .workers import parse_worker

    worker = parse_worker(args.worker) if args.worker is not None else None
    if worker is not None and args.prepare:
        raise UsageError("--prepare and --worker: run --prepare once, then the workers")
    ray_flags = args.address is not None or args.ray_workers or args.ray_cpus
    if args.engine != "ray" and ray_flags:
        raise UsageError("--address, --ray-workers, --ray-cpus: only with --engine ray")
    if args.engine == "ray" and (worker is not None or args.prepare):
        raise UsageError("--engine ray prepares and splits the work itself: drop --worker / --prepare")
    cfg = select_teachers(load_config(ExtractConfig, args.config, args.overrides), args.teachers,
                          args.index_only)
    if args.engine == "ray":
        from .ray_engine import run_extract_ray
        s = run_extract_ray(cfg, add_teacher=args.add_teacher, address=args.address, workers=args.ray_workers,
                            cpus=args.ray_cpus)
        _print_summary(s)
        return EXIT_OK
    from .extract import run_extract, run_prepare  # torch and the teachers: not in --engine ray's driver

    if args.prepare:
        run_prepare(cfg, add_teacher=args.add_teacher)
        print(f"prepared  {cfg.output.store}: start the --worker I/N processes")
        return EXIT_OK
    s = run_extract(cfg, add_teacher=args.add_teacher, worker=worker)
    if s is not None:
        _print_summary(s)
    return EXIT_OK


def _print_summary(s: "Summary") -> None:
    teachers = ", ".join(f"{name} ({dim})" for name, dim in s.teachers.items()) or "none (index only)"
    print(f"store     {s.path} ({'complete' if s.complete else 'INCOMPLETE'}, {human_bytes(s.size_bytes)})")
    print(f"rows      {s.rows} ({s.valid_rows} valid)" + (f"; invalid inputs listed in {s.invalid_log}"
                                                          if s.invalid_log else ""))
    print(f"teachers  {teachers}")
    print(f"this run  {s.rows_done} rows in {s.seconds:.1f} s ({s.rows_per_second:.0f} rows/s)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] == "finetune" else None
    return run_cli(f"{PROG} {command}" if command else PROG, build_parser(command),
                   lambda args: handle(command, args), argv)


if __name__ == "__main__":
    sys.exit(main())
