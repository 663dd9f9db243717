"""featcache-cache: inspect, verify, convert and list feature stores; cache student inputs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from featcache.plumbing import storage
from .cache import FeatureCache
from featcache.plumbing.cli import EXIT_DATA, EXIT_OK, add_debug_flag, human_bytes, run_cli
from .convert import convert
from .errors import CacheError
from .locate import find_stores
from .verify import verify_path
from featcache.rawdata.views import RESIZE_FILTERS

PROG = "featcache-cache"


def _short(value: Any) -> Any:
    """Long lists (a transfer set's row ids) as a count, so `info` stays readable; --json has them all."""
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 20:
        return f"<{len(value)} items>"
    return value


def _print_info(info: dict[str, Any]) -> None:
    params = f" (params: {', '.join(info['view_params'])})" if info["view_params"] else ""
    made = info.get("created_by") or {}
    rows = [
        ("path", info["path"]),
        ("backend", f"{info['backend']} (format {info['format_version']})"),
        ("rows", f"{info['rows']}  views {info['views']}{params}"),
        ("partitions", f"{info['partitions']} x {info['partition_rows']} rows; "
                       f"index {info['index_partitions_done']}/{info['partitions']} done"),
        ("complete", "yes" if info["complete"] else f"NO ({info['over_budget']})" if info["over_budget"] else "NO"),
        ("size", human_bytes(info["size_on_disk"])),
        ("split", info["split"] or "-"),
        ("dataset", info["dataset_fingerprint"]),
        ("created", f"featcache {made.get('version')} git {made.get('git') or '-'} at {info['created_at']}"),
    ]
    if info["source"]:
        rows.append(("source", json.dumps(_short(info["source"]), sort_keys=True)))
    for key in ("retrieval", "subset_of"):
        if key in info:
            rows.append((key, json.dumps(info[key], sort_keys=True)))
    for key, value in rows:
        print(f"{key:<11} {value}")
    print(f"teachers    {len(info['teachers'])}")
    for name, t in info["teachers"].items():
        shape = "x".join(str(s) for s in t["shape"])
        print(f"  {name}: {shape} {t['dtype']}, chunks of {t['chunk_rows']} rows, {t['compressor']}, "
              f"{t['partitions_done']}/{info['partitions']} done, fingerprint {t['fingerprint'][:16]}")
        print(f"    spec {json.dumps(t['spec'], sort_keys=True)}")
    _print_inputs(info)


def _print_inputs(info: dict[str, Any]) -> None:
    inputs = info.get("inputs") or {}
    print(f"inputs      {len(inputs)}")
    for name, doc in inputs.items():
        for array, meta in doc["arrays"].items():
            shape = "x".join(str(s) for s in meta["shape"])
            print(f"  {name}/{array}: {shape} {meta['dtype']}, chunks of {meta['chunk_rows']} rows, "
                  f"{meta['compressor']}, {doc['partitions_done']}/{info['partitions']} done, "
                  f"fingerprint {doc['fingerprint'][:16]}")
        print(f"    spec {json.dumps(doc['spec'], sort_keys=True)}")


def cmd_info(args: argparse.Namespace) -> int:
    with FeatureCache.open(args.store) as cache:
        info = cache.info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print_info(info)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    report = verify_path(args.store)
    for part, counts in sorted(report.nonfinite.items()):
        print(f"{part}: {counts['nan']} NaN, {counts['inf']} inf")
    for note in report.notes:
        print(f"NOTE {note}")
    for problem in report.problems:
        print(f"BAD {problem}")
    verdict = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    print(f"{report.path}: {report.documents_checked} documents and {report.partitions_checked} partitions "
          f"checked, {verdict}")
    return EXIT_OK if report.ok else EXIT_DATA


def cmd_convert(args: argparse.Namespace) -> int:
    bar, progress = _progress_bar("convert")
    with convert(args.src, args.dst, backend=args.backend, compressor=args.compressor,
                 overwrite=args.overwrite, progress=progress) as dst:
        bar.close()
        where = f"{args.src} -> {dst.path} ({dst.backend}, {human_bytes(dst.size_on_disk())})"
        why = _incomplete(dst)
        if why is None:
            print(f"{where}: values and metadata verified equal")
        else:  # the copy holds what the source holds done: a damaged or cut-off source copies as incomplete
            print(f"{where}: NOT complete, as the source is not ({why}; `{PROG} verify {args.src}` says why); "
                  "what it holds verified equal")
    return EXIT_OK


def _incomplete(cache: FeatureCache) -> str | None:
    """Why the store is not complete, as one clause, or None."""
    missing = cache.missing_partitions()
    if missing:
        return "partitions missing for " + ", ".join(f"{part}: {len(ps)} of {cache.num_partitions}"
                                                    for part, ps in missing.items())
    return cache.budget_problem()


def _ls_line(path: str) -> tuple[str, bool]:
    try:
        with FeatureCache.open(path) as cache:
            done = cache.done_partitions()
            complete = all(len(d) == cache.num_partitions for d in done.values()) and not cache.budget_problem()
            teachers = ",".join(cache.teachers) or "-"
            return (f"{path}\t{cache.backend}\t{cache.rows} rows\t{teachers}\t"
                    f"{human_bytes(cache.size_on_disk())}\t{'complete' if complete else 'INCOMPLETE'}"), True
    except (CacheError, OSError, ValueError) as exc:
        return f"{path}\tunreadable: {exc}", False


def cmd_ls(args: argparse.Namespace) -> int:
    all_ok, found = True, 0
    for path in find_stores(args.dir):
        line, ok = _ls_line(path)
        if not ok and "not a featcache store" in line:
            continue  # another tool's Zarr or HDF5 data
        print(line)
        found += 1
        all_ok &= ok
    if not found:
        print(f"no featcache stores under {args.dir}", file=sys.stderr)
    return EXIT_OK if all_ok else EXIT_DATA


def _progress_bar(desc: str):
    bar = tqdm(desc=desc, unit="partition", disable=None, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    return bar, progress


def cmd_subset(args: argparse.Namespace) -> int:
    from .retrieve import labeled_subset, write_subset_store

    with FeatureCache.open(args.store) as src:
        rows = labeled_subset(src, args.labels_per_class, args.seed)
        dst = write_subset_store(args.out, src, rows, keep_labels=True, split=src.split or "train",
                                 extra={"subset_of": {"store": src.path, "dataset_fingerprint": src.dataset_fingerprint,
                                                      "labels_per_class": args.labels_per_class, "seed": args.seed}},
                                 overwrite=args.overwrite)
        print(f"{dst.path}: {dst.rows} labeled rows ({args.labels_per_class} per class) of {src.path}")
    return EXIT_OK


def _describe_choice(chosen, queries: FeatureCache, pool: FeatureCache) -> str:
    if (chosen.query < 0).all():
        return "drawn uniformly (random control)"
    text = f"{len(set(chosen.query.tolist()))} queries, mean cosine {float(np.mean(chosen.similarity)):.3f}"
    hidden = pool.labels[chosen.rows]
    if (hidden >= 0).all():  # the pool's labels are hidden from training, but they measure the retrieval
        text += f", {float(np.mean(hidden == queries.labels[chosen.query])):.1%} share their query's class"
    if chosen.short_queries:
        text += f"; {chosen.short_queries} queries short of their quota"
    return text


def cmd_retrieve(args: argparse.Namespace) -> int:
    from .retrieve import random_transfer, retrieve, write_transfer_store

    with FeatureCache.open(args.queries) as queries, FeatureCache.open(args.pool) as pool:
        for cache in (queries, pool):
            cache.teacher_info(args.teacher)  # a missing teacher is named before any work
        info = {"queries": queries.path, "queries_fingerprint": queries.dataset_fingerprint, "pool": pool.path,
                "pool_fingerprint": pool.dataset_fingerprint, "teacher": args.teacher, "per_query": args.per_query,
                "budget": args.budget, "random": args.random, "seed": args.seed}
        bar, progress = _progress_bar("retrieve")
        chosen = retrieve(queries, pool, args.teacher, args.per_query, args.budget, progress=progress)
        bar.close()
        if args.random:  # the control: as many rows as retrieval picks, drawn uniformly
            chosen = random_transfer(queries, pool, len(chosen.rows), args.seed)
        dst = write_transfer_store(args.out, pool, chosen, info, overwrite=args.overwrite, queries=queries)
        print(f"{dst.path}: {dst.rows} transfer rows from {pool.rows} pool rows; {_describe_choice(chosen, queries, pool)}")
    return EXIT_OK


def cmd_inputs(args: argparse.Namespace) -> int:
    from .inputs import cache_inputs
    from featcache.rawdata import source_of

    with FeatureCache.open(args.store, mode="r+") as cache:
        source = source_of(cache, args.data_root)
        bar, progress = _progress_bar("inputs")
        s = cache_inputs(cache, source, args.size, args.filter, tokenizer=args.tokenizer, max_length=args.max_length,
                         name=args.name, threads=args.threads, compressor=args.compressor, progress=progress)
        bar.close()
        resumed = f"; {s.partitions_skipped} partitions were already done" if s.partitions_skipped else ""
        rate = f", {s.rows_written / s.seconds:.0f} rows/s" if s.seconds > 0 and s.rows_written else ""
        what = "pixels" if s.spec["kind"] == "image" else "ids"
        dtype = "uint8" if s.spec["kind"] == "image" else "int32 (+ lengths)"
        print(f"{cache.path}: inputs/{s.name}/{what} {'x'.join(map(str, s.shape))} {dtype} "
              f"({human_bytes(s.nbytes)}): {s.rows_written} rows in {s.seconds:.1f} s{rate}{resumed}; "
              f"store now {human_bytes(cache.size_on_disk())}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Inspect, verify, convert and list featcache stores.")
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="rows, views, teachers, completeness, size")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("verify", help="recompute every checksum; exit 1 naming each bad partition")
    p.add_argument("store")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("convert", help="copy a store to another backend, verified equal")
    p.add_argument("src")
    p.add_argument("dst", help="destination (.h5/.hdf5 means HDF5, otherwise Zarr)")
    p.add_argument("--backend", choices=["zarr", "hdf5"], help="override the backend chosen from DST")
    p.add_argument("--compressor", choices=["none", "lz4"], help="default: the source's")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("subset", help="a labeled subset (N per class) of a store, features copied")
    p.add_argument("store")
    p.add_argument("--labels-per-class", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_subset)
    p = sub.add_parser("retrieve", help="query-balanced transfer set from an unlabeled pool")
    p.add_argument("--queries", required=True, help="labeled store: every valid labeled row is a query")
    p.add_argument("--pool", required=True, help="unlabeled pool store (its labels, if any, are hidden)")
    p.add_argument("--teacher", required=True, help="whose features define the neighbours")
    p.add_argument("--per-query", type=int, required=True, help="neighbours per query (k)")
    p.add_argument("--budget", type=int, help="at most this many transfer rows in all")
    p.add_argument("--random", action="store_true", help="the control: as many rows, drawn uniformly")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_retrieve)
    p = sub.add_parser("inputs", help="cache every row's student input: images (all views) at one "
                                      "resolution, or texts as token ids")
    p.add_argument("store")
    p.add_argument("--size", type=int, default=0, help="image stores: the student's image size (pixels per side)")
    p.add_argument("--filter", default="bilinear", choices=list(RESIZE_FILTERS),
                   help="resize filter (the student's student.resize_filter; default bilinear)")
    p.add_argument("--tokenizer", default="", help="text stores: the student's tokenizer directory (data.tokenizer)")
    p.add_argument("--max-length", type=int, default=128, help="text stores: student.max_length (default 128)")
    p.add_argument("--name", default="", help="node name under inputs/ (default image<SIZE>_<FILTER>, "
                                              "tokens<LENGTH>_<TOKENIZER HASH>)")
    p.add_argument("--data-root", default="", help="relocate the raw inputs the store recorded")
    p.add_argument("--threads", type=int, default=2, help="decoding threads")
    p.add_argument("--compressor", choices=["none", "lz4"], default="none")
    p.set_defaults(func=cmd_inputs)
    p = sub.add_parser("ls", help="one line per store found under DIR (or s3://bucket/prefix)")
    p.add_argument("dir")
    p.set_defaults(func=cmd_ls)
    storage.add_flag(parser)
    for action in sub.choices.values():
        add_debug_flag(action, default=argparse.SUPPRESS)
        storage.add_flag(action, default=argparse.SUPPRESS)
    return parser


def _handle(args: argparse.Namespace) -> int:
    storage.use_flags(args)
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, build_parser(), _handle, argv)


if __name__ == "__main__":
    sys.exit(main())
