"""Splitting extraction: --worker processes and the Ray engine against one process, in one run.

    python benchmarks/bench_workers.py [--rows 2000,8000] [--repeats 2]

(a) One ``featcache-extract CONFIG --worker 0/1`` process (torch's default threads: every core;
and, as a control, one thread) against two ``--worker I/2`` processes started together (one
thread each), on a store prepared beforehand (``--prepare``, not timed): rows/s of the whole
commands, start-up and teacher load included. (b) Plain ``featcache-extract CONFIG`` against
``--engine ray --ray-workers 2`` (two actors, one CPU each) on the same config, whole commands:
once with Ray starting its own local instance inside the command, once joining an instance
already running (``--address``), as on a cluster where Ray is up before the job. Goal (issue 23):
Ray within 10% of plain featcache-extract (rows/s ratio >= 0.9); also given against one
``--worker 0/1`` process (the same work, its store prepared beforehand). Ray's cost is mostly
fixed (start-up, connection, shut-down), so each ``--rows`` size is measured: a short job and a
longer one, and the seconds each command spends outside its extraction are reported. Each
measure runs ``--repeats`` times (interleaved), the fastest kept. Inputs are real Fashion-MNIST
images as PNG files, the demo teacher (EfficientNet-Lite0 at 112 px). Saves JSON under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from bench_extract import write_pngs  # benchmarks/bench_extract.py
from common import EFFNET, result_path, save  # benchmarks/common.py
from featcache.cache_tools import FeatureCache
from featcache.plumbing.provenance import created_by, utc_now

BATCH = 64
PARTITION_ROWS = 128


def _toml(images: str, store: str) -> str:
    teacher = "\n".join(f"{k} = {v!r}" if not isinstance(v, list) else f"{k} = {v}" for k, v in EFFNET.items())
    return (f"batch_size = {BATCH}\n[source]\nkind = 'image_folder'\nroot = {images!r}\n"
            f"[output]\nstore = {store!r}\npartition_rows = {PARTITION_ROWS}\noverwrite = false\n"
            f"[[teachers]]\n{teacher}\n")


def _config(tmp: str, images: str, name: str) -> tuple[str, str]:
    store = os.path.join(tmp, f"{name}.zarr")
    path = os.path.join(tmp, f"{name}.toml")
    with open(path, "w") as fh:
        fh.write(_toml(images, store))
    return path, store


def _exe() -> str:
    return os.path.join(os.path.dirname(sys.executable), "featcache-extract")


def _env(threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return {**env, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}


def _timed(cmds: list[list[str]], threads: int | None) -> tuple[float, list[str]]:
    """Wall seconds until every command (started together) has finished, and their outputs."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=_env(threads), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for c in cmds]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(p.args)} failed:\n{err[-3000:]}")
    return wall, [o + e for o, e in outs]


def _complete(store: str) -> None:
    with FeatureCache.open(store) as cache:
        assert cache.is_complete, store


def _in_run_s(out: str) -> float:
    """The command's own 'this run ... in S s' (extraction alone, after start-up and loading)."""
    m = re.search(r"this run\s+\d+ rows in ([\d.]+) s", out)
    return float(m.group(1)) if m else float("nan")


def workers(tmp: str, images: str, n: int, threads: int | None) -> float:
    cfg, store = _config(tmp, images, f"workers{n}_{threads}")
    _timed([[_exe(), cfg, "--prepare"]], None)
    wall, _ = _timed([[_exe(), cfg, "--worker", f"{i}/{n}"] for i in range(n)], threads)
    _complete(store)
    return wall


def plain(tmp: str, images: str) -> tuple[float, float]:
    cfg, store = _config(tmp, images, "plain")
    wall, outs = _timed([[_exe(), cfg]], None)
    _complete(store)
    return wall, _in_run_s(outs[0])


def on_ray(tmp: str, images: str, name: str, address: str | None) -> tuple[float, float]:
    cfg, store = _config(tmp, images, name)
    extra = ["--address", address] if address else []
    wall, outs = _timed([[_exe(), cfg, "--engine", "ray", "--ray-workers", "2", *extra]], None)
    _complete(store)
    return wall, _in_run_s(outs[0])


MEASURES = ("one", "one_1t", "two", "plain", "ray_own", "ray_running")


def measure_once(run: str, images: str) -> dict[str, tuple[float, float]]:
    """Every measure once on ``images``: (wall s, the command's own extraction s)."""
    import ray

    out = {"one": (workers(run, images, 1, None), 0.0), "one_1t": (workers(run, images, 1, 1), 0.0),
           "two": (workers(run, images, 2, 1), 0.0), "plain": plain(run, images),
           "ray_own": on_ray(run, images, "ray_own", None)}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        out["ray_running"] = on_ray(run, images, "ray_running", ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
    return out


def summarise(rows: int, times: dict[str, list[tuple[float, float]]]) -> dict[str, object]:
    """The fastest of each measure, the ratios, and Ray's fixed cost and pace against plain."""
    best = {k: min(times[k]) for k in MEASURES}
    (one, _), (one_1t, _), (two, _), (plain_s, plain_in), (ray_s, ray_in), (running_s, running_in) = (
        best[k] for k in MEASURES)
    res: dict[str, object] = {
        "rows": rows, "all_s": {k: [t for t, _ in v] for k, v in times.items()},
        "one_worker_s": one, "one_worker_one_thread_s": one_1t, "two_workers_s": two,
        "two_workers_rows_per_s_over_one": one / two, "two_workers_rows_per_s_over_one_thread": one_1t / two,
        "plain_s": plain_s, "plain_extraction_s": plain_in,
        "ray_own_instance_s": ray_s, "ray_own_instance_extraction_s": ray_in,
        "ray_running_instance_s": running_s, "ray_running_instance_extraction_s": running_in,
        "ray_own_rows_per_s_over_plain": plain_s / ray_s, "ray_running_rows_per_s_over_plain": plain_s / running_s,
        "ray_own_rows_per_s_over_one_worker": one / ray_s, "ray_running_rows_per_s_over_one_worker": one / running_s,
        "ray_own_rows_per_s_over_two_workers": two / ray_s, "ray_running_rows_per_s_over_two_workers": two / running_s,
        # the seconds outside extraction (start-up, connection, teacher loads, preparation, shut-down)
        "outside_extraction_s": {"plain": plain_s - plain_in, "ray_own": ray_s - ray_in,
                                 "ray_running": running_s - running_in},
    }
    res["goals"] = {"ray_own_over_plain>=0.9": plain_s / ray_s >= 0.9,
                    "ray_running_over_plain>=0.9": plain_s / running_s >= 0.9}
    return res


def report(res: dict) -> None:
    rows, one, one_1t, two = res["rows"], res["one_worker_s"], res["one_worker_one_thread_s"], res["two_workers_s"]
    print(f"--- {rows} rows")
    print(f"1 x --worker 0/1            {one:7.1f} s  ({rows / one:5.1f} rows/s)")
    print(f"1 x --worker 0/1, 1 thread  {one_1t:7.1f} s  ({rows / one_1t:5.1f} rows/s)")
    print(f"2 x --worker I/2 together   {two:7.1f} s  ({rows / two:5.1f} rows/s)   {one / two:.3f}x the rows/s of one, "
          f"{one_1t / two:.3f}x one with 1 thread")
    plain_s, outside = res["plain_s"], res["outside_extraction_s"]
    print(f"featcache-extract           {plain_s:7.1f} s  ({rows / plain_s:5.1f} rows/s; "
          f"{outside['plain']:.1f} s outside extraction)")
    for key, name in (("ray_own", "own instance"), ("ray_running", "running one ")):
        wall = res[f"{key}_instance_s"]
        print(f"--engine ray, {name}  {wall:7.1f} s  ({rows / wall:5.1f} rows/s; {outside[key]:.1f} s outside "
              f"extraction)   {plain_s / wall:.3f}x plain's rows/s, {one / wall:.3f}x one worker's (goal >= 0.9)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="2000,8000", help="job sizes, comma-separated: Ray's fixed cost against "
                                                        "a short job and a longer one")
    ap.add_argument("--repeats", type=int, default=2, help="each measure this many times, the fastest kept")
    ap.add_argument("--out", default=result_path("bench_workers"))
    args = ap.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]
    tmp = tempfile.mkdtemp(prefix="featcache-bench-workers-")
    load_before = os.getloadavg()[0]
    times: dict[int, dict[str, list[tuple[float, float]]]] = {n: {} for n in sizes}
    try:
        for n in sizes:
            images = write_pngs(os.path.join(tmp, f"images{n}"), n)
            for r in range(args.repeats):  # interleaved: a drift in the machine's load hits every measure
                run = os.path.join(tmp, f"n{n}r{r}")
                os.makedirs(run)
                for k, v in measure_once(run, images).items():
                    times[n].setdefault(k, []).append(v)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"sizes": [summarise(n, times[n]) for n in sizes], "repeats": args.repeats, "batch": BATCH,
           "partition_rows": PARTITION_ROWS, "cpus": os.cpu_count(), "load_average_before": load_before,
           "featcache": created_by(), "at": utc_now()}
    res["goals"] = {f"{size['rows']} rows: {k}": v for size in res["sizes"] for k, v in size["goals"].items()}
    print(f"load average before: {load_before:.2f} on {os.cpu_count()} CPUs")
    for size in res["sizes"]:
        report(size)
    save(args.out, res)


if __name__ == "__main__":
    main()
