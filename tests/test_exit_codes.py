"""The exit-code table, through every console script as a user runs it:

    0 ok · 1 data/store problem · 2 usage/config mistake · 3 internal bug · 130 interrupted

Every failure is one line on stderr and never a traceback. The internal and interrupted rows
patch a function inside the installed package (a subprocess ``python -c``), since no input
should be able to cause them.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featcache.cache_tools import FeatureCache
from featcache.rawdata import fashion_mnist

BIN = os.path.dirname(sys.executable)


def _write_idx(root: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    images, labels = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), np.arange(n) % 4
    with open(os.path.join(root, "train-images-idx3-ubyte"), "wb") as fh:
        fh.write(struct.pack(">HBB3I", 0, 8, 3, n, 28, 28) + images.tobytes())
    with open(os.path.join(root, "train-labels-idx1-ubyte"), "wb") as fh:
        fh.write(struct.pack(">HBBI", 0, 8, 1, n) + labels.astype(np.uint8).tobytes())


def _make_store(path: str, raw: str) -> str:
    src = fashion_mnist(raw, "train")
    cache = FeatureCache.create(path, sample_ids=src.sample_ids, labels=src.labels, partition_rows=64,
                                split="train", source=src.describe())
    cache.add_teacher("t", 8, {"library": "test", "model_id": "t"})
    rng = np.random.default_rng(0)
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_partition(p, features={"t": rng.standard_normal((b - a, 8)).astype(np.float16)},
                              valid=np.ones(b - a, bool))
    cache.close()
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A complete store (with raw inputs), a damaged one, an image folder with one broken file, configs."""
    d = tmp_path_factory.mktemp("codes")
    _write_idx(str(d / "raw"), 128, seed=0)
    store, other = _make_store(str(d / "good.zarr"), str(d / "raw")), _make_store(str(d / "other.zarr"), str(d / "raw"))
    rng = np.random.default_rng(0)
    damaged = str(d / "damaged.zarr")
    subprocess.run([os.path.join(BIN, "featcache-cache"), "convert", store, damaged], check=True,
                   capture_output=True)
    with open(os.path.join(damaged, "zarr.json"), "w") as fh:
        fh.write('{"zarr_format": 3, "node_type": "gr')  # cut off mid-write
    images = d / "images"
    for c in range(2):
        os.makedirs(images / f"c{c}")
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"c{c}" / f"{i}.png")
    (images / "c0" / "broken.png").write_bytes(b"not a png")
    extract = d / "extract.toml"
    extract.write_text(f'[source]\nkind = "image_folder"\nroot = {str(images)!r}\n'
                       f'[output]\nstore = {str(d / "idx.zarr")!r}\n')
    train = d / "train.toml"
    train.write_text(f'out_dir = {str(d / "run")!r}\nseed = 0\n[data]\nstore = {store!r}\ntest_store = ""\n'
                     '[student]\nname = "small_cnn"\nimage_size = 28\nwidth = 16\n[method]\nname = "stl"\n'
                     '[optim]\nepochs = 1\nbatch_size = 32\n')
    finetune = d / "finetune.toml"
    finetune.write_text("epochs = 1\n")
    return {"finetune": str(finetune), "store": store, "other": other, "damaged": damaged, "extract": str(extract), "train": str(train), "dir": str(d)}


def _patched(script_module: str, target: str, exc: str, args: list[str]) -> list[str]:
    """``python -c``: replace ``target`` (module:attribute) with a function raising ``exc``, then run the CLI."""
    module, attr = target.split(":")
    owner, _, name = attr.rpartition(".")
    code = (f"import sys, importlib; m = importlib.import_module({module!r}); o = m{'.' + owner if owner else ''}\n"
            f"def broken(*a, **k):\n    raise {exc}\n"
            f"setattr(o, {name!r}, broken)\n"
            f"from {script_module} import main\nsys.exit(main({args!r}))")
    return [sys.executable, "-c", code]


def _cmd(script: str, args: list[str]) -> list[str]:
    return [os.path.join(BIN, script), *args]


# (script, case, expected exit code, argv builder, a piece of the error line)
CASES = [
    # featcache-cache
    ("featcache-cache", "ok", 0, lambda w: _cmd("featcache-cache", ["info", w["store"]]), None),
    ("featcache-cache", "damaged store", 1, lambda w: _cmd("featcache-cache", ["info", w["damaged"]]), "damaged.zarr"),
    ("featcache-cache", "store not found", 2,
     lambda w: _cmd("featcache-cache", ["info", os.path.join(w["dir"], "nowhere.zarr")]), "nowhere.zarr"),
    ("featcache-cache", "internal bug", 3,
     lambda w: _patched("featcache.cache_tools.cli", "featcache.cache_tools.cache:FeatureCache.open",
                        "ZeroDivisionError('division by zero')", ["info", w["store"]]), "internal error: ZeroDivisionError"),
    ("featcache-cache", "interrupted", 130,
     lambda w: _patched("featcache.cache_tools.cli", "featcache.cache_tools.cache:FeatureCache.open",
                        "KeyboardInterrupt", ["info", w["store"]]), "interrupted"),
    # featcache-extract
    ("featcache-extract", "ok", 0,
     lambda w: _cmd("featcache-extract", [w["extract"], "--index-only", "--set", "max_invalid_fraction=0.5"]), None),
    ("featcache-extract", "wrong fingerprint", 1,
     lambda w: _cmd("featcache-extract", [w["extract"], "--index-only", "--set", "max_invalid_fraction=0.5",
                                          "--set", f"output.store={w['other']!r}"]), "other.zarr"),
    ("featcache-extract", "config not found", 2,
     lambda w: _cmd("featcache-extract", [os.path.join(w["dir"], "none.toml")]), "config file not found"),
    ("featcache-extract", "bad --set", 2,
     lambda w: _cmd("featcache-extract", [w["extract"], "--set", "views=many"]), "views: expected int"),
    ("featcache-extract", "fine-tune input error", 1,
     lambda w: _patched("featcache.pipeline.cli", "featcache.pipeline.finetune:run_finetune",
                        "__import__('featcache.rawdata', fromlist=['InputError']).InputError('x.png: cannot decode')",
                        ["finetune", w["finetune"]]), "x.png: cannot decode"),
    ("featcache-extract", "internal bug", 3,
     lambda w: _patched("featcache.pipeline.cli", "featcache.pipeline.extract:run_extract",
                        "ZeroDivisionError('division by zero')", [w["extract"]]), "internal error: ZeroDivisionError"),
    # featcache-train
    ("featcache-train", "ok", 0, lambda w: _cmd("featcache-train", [w["train"]]), None),
    ("featcache-train", "missing teacher", 1,
     lambda w: _cmd("featcache-train", [w["train"], "--set", "method.name=aft", "--set", 'data.teachers=["nope"]']),
     "no teacher 'nope'"),
    ("featcache-train", "damaged store", 1,
     lambda w: _cmd("featcache-train", [w["train"], "--set", f"data.store={w['damaged']!r}"]), "damaged.zarr"),
    ("featcache-train", "store not found", 2,
     lambda w: _cmd("featcache-train", [w["train"], "--set", "data.store='nowhere.zarr'"]), "nowhere.zarr"),
    ("featcache-train", "bad --set", 2, lambda w: _cmd("featcache-train", [w["train"], "--set", "optim.lr=fast"]),
     "optim.lr: expected float"),
    ("featcache-train", "internal bug", 3,
     lambda w: _patched("featcache.train.cli", "featcache.train.loop:run", "ZeroDivisionError('division by zero')",
                        [w["train"]]), "internal error: ZeroDivisionError"),
]


@pytest.mark.parametrize("script,case,code,argv,says", CASES, ids=[f"{s}-{c}" for s, c, *_ in CASES])
def test_exit_code(world, script, case, code, argv, says):
    res = subprocess.run(argv(world), capture_output=True, text=True, cwd=world["dir"], timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr + res.stdout
    if code == 0:
        return
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    prefix = "internal error" if code == 3 else ("interrupted" if code == 130 else "error:")
    assert lines[0].startswith(f"{script}") and prefix in lines[0], lines[0]
    if says:
        assert says in lines[0], lines[0]
    if code == 3:
        assert lines[0].endswith("(rerun with --debug for the traceback)")


def test_internal_bug_with_debug_shows_the_traceback_and_still_exits_3(world):
    argv = _patched("featcache.cache_tools.cli", "featcache.cache_tools.cache:FeatureCache.open",
                    "ZeroDivisionError('division by zero')", ["info", world["store"], "--debug"])
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 3 and "Traceback" in res.stderr and "ZeroDivisionError" in res.stderr


def test_every_featcache_error_survives_a_trip_to_another_process():
    """Ray hands an actor's exception back pickled; one that cannot be rebuilt arrives as Ray's own
    error and the user's one line (which store, what is wrong) is lost."""
    import importlib
    import inspect
    import pickle
    import pkgutil

    classes = set()
    rooms = [importlib.import_module(f"featcache.{room}")
             for room in ("cache_tools", "pipeline", "plumbing", "rawdata", "train")]
    for mod in (m for room in rooms for m in pkgutil.walk_packages(room.__path__, room.__name__ + ".")):
        if mod.name.startswith(("featcache.pipeline.teachers.", "featcache.train.students")):
            continue  # model libraries; their errors are in featcache.pipeline.teachers itself
        try:
            module = importlib.import_module(mod.name)
        except ImportError:  # an optional extra (ray, onnx) not installed here
            continue
        classes |= {c for _n, c in inspect.getmembers(module, inspect.isclass)
                    if issubclass(c, Exception) and c.__module__.startswith("featcache.")}
    assert len(classes) >= 15
    for cls in sorted(classes, key=lambda c: c.__qualname__):
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
        err = cls(*[f"arg{i}" for i in range(len(params))]) if params else cls("store: what went wrong")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err), cls
