"""Fashion-MNIST from its four idx files (optionally gzipped), as Debian's dataset-fashion-mnist installs them."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from .source import Source, SourceError


FASHION_MNIST_DIRS = ("/usr/share/dataset-fashion-mnist", "/usr/share/fashion-mnist",
                      "/usr/share/datasets/fashion-mnist")


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise SourceError(f"{path}: not an idx file of unsigned bytes")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(root: str, stem: str) -> str:
    for name in (stem, f"{stem}.gz"):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    raise SourceError(f"{root}: {stem}[.gz] not found (Fashion-MNIST idx files)")


def default_fashion_mnist_root() -> str | None:
    for root in FASHION_MNIST_DIRS:
        if os.path.isdir(root):
            return root
    return None


def _download_fashion_mnist(root: str) -> str:
    """torchvision's download (online only); returns the folder holding the idx files."""
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(root, train=True, download=True)
        FashionMNIST(root, train=False, download=True)
    except (OSError, RuntimeError) as exc:
        raise SourceError(f"Fashion-MNIST download into {root} failed ({exc}); offline, install Debian's "
                          "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set source.root") from exc
    return os.path.join(root, "FashionMNIST", "raw")


def fashion_mnist(root: str | None = None, split: str = "train", download: bool = False) -> Source:
    if split not in ("train", "test"):
        raise SourceError(f"fashion_mnist split must be 'train' or 'test', got {split!r}")
    if download:
        root = _download_fashion_mnist(root or os.path.expanduser("~/.cache/featcache/fashion-mnist"))
    root = root or default_fashion_mnist_root()
    if root is None:
        raise SourceError("Fashion-MNIST not found: install Debian's dataset-fashion-mnist, set source.root, "
                          "or set source.download = true (online)")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)

    def load(i: int):
        from PIL import Image
        return Image.fromarray(images[i], mode="L").convert("RGB")

    ids = [f"fashion_mnist/{split}/{i:05d}" for i in range(len(labels))]
    return Source("fashion_mnist", "image", ids, labels, list(FASHION_MNIST_CLASSES),
                  {"root": os.path.abspath(root), "split": split}, load)
