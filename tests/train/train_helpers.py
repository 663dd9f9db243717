"""Helpers the stage-2 tests import by name: idx images on disk, small real stores written with the
store API, a training TOML as a user writes one. Fixtures live in conftest.py (a helper module of its
own name never clashes with another test folder's conftest in one pytest call)."""

import os
import struct

import numpy as np

from featcache.cache_tools import FeatureCache
from featcache.rawdata import fashion_mnist
from featcache.rawdata.views import EVAL_VIEW, VIEW_PARAMS, sample_view


def write_idx(root: str, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f"{prefix}-images-idx3-ubyte"), "wb") as fh:
        fh.write(struct.pack(">HBB3I", 0, 8, 3, *images.shape) + images.astype(np.uint8).tobytes())
    with open(os.path.join(root, f"{prefix}-labels-idx1-ubyte"), "wb") as fh:
        fh.write(struct.pack(">HBBI", 0, 8, 1, len(labels)) + labels.astype(np.uint8).tobytes())


def synthetic_task(n: int, seed: int, classes: int = 4, noise: float = 90.0):
    """Images rendered from a 6-d latent (plus heavy pixel noise); labels from the latent.

    The teacher's features are a random linear map of the clean latent: they carry
    the label signal that a student with few labels struggles to find in the pixels.
    """
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).standard_normal((6, 28, 28))
    z = rng.standard_normal((n, 6))
    w = np.random.default_rng(99).standard_normal((6, classes))
    labels = (z @ w).argmax(1)
    images = 128 + 30 * np.einsum("nk,khw->nhw", z, basis) + noise * rng.standard_normal((n, 28, 28))
    feats = z @ np.random.default_rng(7).standard_normal((6, 48)) + 0.05 * rng.standard_normal((n, 48))
    return np.clip(images, 0, 255).astype(np.uint8), labels, feats


def build_store(path: str, root: str, split: str, n: int, seed: int, views: int = 1, partition_rows: int = 64,
                backend: str | None = None, noise_dims: int = 0) -> str:
    """A store of the synthetic task; ``noise_dims`` more teacher dimensions of pure noise (as
    spread as the label-carrying ones, unrelated to the input) follow the informative ones."""
    images, labels, feats = synthetic_task(n, seed)
    if noise_dims:
        noise = np.random.default_rng(seed + 500).standard_normal((n, noise_dims)) * feats.std()
        feats = np.concatenate([feats, noise], 1)
    write_idx(root, "train" if split == "train" else "t10k", images, labels)
    src = fashion_mnist(root, split)
    names = VIEW_PARAMS if views > 1 else ()
    cache = FeatureCache.create(path, sample_ids=src.sample_ids, labels=src.labels, views=views,
                                view_param_names=names, partition_rows=partition_rows, split=split,
                                source=src.describe(), backend=backend)
    cache.add_teacher("oracle", feats.shape[1], {"library": "test", "model_id": "latent-map"})
    rng = np.random.default_rng(seed + 1)
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        if views > 1:
            params = np.stack([[EVAL_VIEW] + [sample_view(rng, 28, 28) for _ in range(views - 1)]
                               for _ in range(a, b)])
            f = np.repeat(feats[a:b, None], views, 1)
            cache.write_partition(p, features={"oracle": f}, valid=np.ones(b - a, bool), view_params=params)
        else:
            cache.write_partition(p, features={"oracle": feats[a:b]}, valid=np.ones(b - a, bool))
    cache.close()
    return path


def index_store(path: str, src, partition_rows: int = 64) -> FeatureCache:
    """A store of ``src``'s rows with every row valid and no teacher: what an index-only
    extraction writes, for students that need only the raw inputs."""
    cache = FeatureCache.create(path, sample_ids=src.sample_ids, labels=src.labels, source=src.describe(),
                                partition_rows=partition_rows)
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_partition(p, valid=np.ones(b - a, bool))
    return cache


def write_config(path, train: str, test: str, out: str, epochs: int, batch_size: int, width: int = 128,
                 max_ram_gb: float = 4.0) -> str:
    """A small training TOML on the synthetic stores, as a user writes one."""
    path.write_text(f"""
out_dir = {out!r}
[data]
store = {train!r}
test_store = {test!r}
max_ram_gb = {max_ram_gb!r}
[student]
image_size = 28
width = {width}
[optim]
epochs = {epochs}
batch_size = {batch_size}
""")
    return str(path)
