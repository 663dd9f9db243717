"""Stage 2's data path: splits of the store's rows, raw inputs, and cached features.

Features come from the store by row id (never from a teacher); raw inputs come
from the source the store recorded, checked against the store's dataset
fingerprint. Features are held in memory when they fit ``max_ram_gb``, else
streamed with chunk-shuffled reads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from featcache.cache_tools import FeatureCache
from featcache.cache_tools.raw import open_with_inputs as open_split_store
from featcache.cache_tools.paths import resolve_path
from featcache.cache_tools.reading import iter_chunk_shuffled
from featcache.cache_tools.sources import Source
from featcache.cache_tools.views import apply_view

from .config import DataConfig, StudentConfig

GiB = 1 << 30


def carve(rows: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split off ``fraction`` of rows: (rest, carved), both sorted."""
    perm = rng.permutation(rows)
    k = int(round(len(rows) * fraction))
    return np.sort(perm[k:]), np.sort(perm[:k])


def label_budget(rows: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    if per_class <= 0:
        return rows
    perm = rng.permutation(rows)
    keep = np.concatenate([perm[labels[perm] == c][:per_class] for c in np.unique(labels[rows])])
    return np.sort(keep)


class Inputs:
    """Raw inputs of one source as model-ready tensors, decoded by a few threads."""

    def __init__(self, source: Source, student: StudentConfig, tokenizer: str = "", threads: int = 2) -> None:
        self.source, self.size, self.max_length = source, student.image_size, student.max_length
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads))
        self.tokenizer = load_tokenizer(tokenizer) if source.modality == "text" else None
        if source.modality == "text" and self.tokenizer is None:
            raise ValueError("data.tokenizer: text students need a local tokenizer directory")

    def _image(self, i: int, params: np.ndarray | None) -> np.ndarray:
        from PIL import Image

        img = self.source.load(int(i))
        if params is not None:
            img = apply_view(img, params)
        return np.asarray(img.resize((self.size, self.size), Image.BILINEAR), dtype=np.uint8)

    def batch(self, rows: np.ndarray, params: np.ndarray | None = None) -> Any:
        if self.source.modality == "text":
            texts = [self.source.load(int(i)) for i in rows]
            return self.tokenizer(texts, self.max_length)
        plist = [None] * len(rows) if params is None else list(params)
        arr = np.stack(list(self.pool.map(self._image, rows, plist)))
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
        return x.sub_(0.5).div_(0.5)


def load_tokenizer(path: str):
    """A fast tokenizer from a local Hugging Face directory: texts -> (ids, mask) tensors."""
    if not path:
        return None
    from tokenizers import Tokenizer

    path = resolve_path(path)
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: no tokenizer.json (a Hugging Face fast tokenizer directory)")
    tok = Tokenizer.from_file(file)
    pad_id = tok.token_to_id("[PAD]") or 0

    def encode(texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), max_length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.bool)
        for row, enc in enumerate(tok.encode_batch(texts)):
            toks = enc.ids[:max_length]
            ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            mask[row, : len(toks)] = True
        return ids, mask

    encode.vocab_size = tok.get_vocab_size()  # type: ignore[attr-defined]
    return encode


class FeatureBank:
    """The cached teacher features of one store, concatenated over the chosen teachers."""

    def __init__(self, cache: FeatureCache, teachers: tuple[str, ...], rows: np.ndarray, max_ram_gb: float,
                 standardize: bool = False) -> None:
        self.cache, self.teachers = cache, list(teachers) or cache.teachers
        if not self.teachers:
            raise ValueError(f"{cache.path}: store has no teachers; feature methods need one")
        for t in self.teachers:
            cache.teacher_info(t)  # KeyError names the teacher and the ones present
        self.dims = [cache.teacher_info(t)["dim"] for t in self.teachers]
        self.dim, self.views = sum(self.dims), cache.views
        nbytes = sum(int(np.prod(cache.teacher_info(t)["shape"])) * np.dtype(cache.teacher_info(t)["dtype"]).itemsize
                     for t in self.teachers)
        self.in_memory = nbytes <= max_ram_gb * GiB
        self.data = np.concatenate([cache.load(t) for t in self.teachers], -1) if self.in_memory else None
        self.chunk_rows = max(cache.chunk_rows(t) for t in self.teachers)
        # streaming keeps about 4 blocks of chunks alive (in flight, concatenated, permuted): fit the budget
        chunk_bytes = self.chunk_rows * nbytes / max(cache.rows, 1)
        self.chunks_per_block = max(1, min(8, int(max_ram_gb * GiB / (4 * chunk_bytes))))
        self.shift = self.scale = None
        if standardize:
            self.shift, self.scale = self._block_stats(rows)

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self.data is not None:
            return self.data[start:stop]
        return np.concatenate([self.cache.read(t, start, stop) for t in self.teachers], -1)

    def _block_stats(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-teacher mean vector and one scale, so every block has unit mean norm on `rows`."""
        total = np.zeros(self.dim, np.float64)
        sq = np.zeros(self.dim, np.float64)
        count = 0
        for _, feats in iter_chunk_shuffled(self._read, self.cache.rows, self.chunk_rows, 4096,
                                            rng=np.random.default_rng(0), rows=rows,
                                            chunks_per_block=self.chunks_per_block):
            f = feats.reshape(-1, self.dim).astype(np.float64)
            total += f.sum(0)
            sq += (f ** 2).sum(0)
            count += len(f)
        mean = total / count
        var = sq / count - mean ** 2
        scale = np.empty(self.dim)
        start = 0
        for d in self.dims:
            scale[start:start + d] = np.sqrt(max(var[start:start + d].sum(), 1e-12))
            start += d
        return mean.astype(np.float32), scale.astype(np.float32)

    def _finish(self, feats: np.ndarray) -> np.ndarray:
        out = feats.astype(np.float32)
        if self.shift is not None:
            out = (out - self.shift) / self.scale
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        if self.data is not None:
            return self._finish(self.data[rows])
        return self._finish(np.concatenate([self.cache.take(t, rows) for t in self.teachers], -1))

    def take_eval(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) features of the eval view (view 0): what a task head is fitted on."""
        feats = self.take(rows)
        return feats[:, 0] if self.views > 1 else feats

    def epoch(self, rows: np.ndarray, batch_size: int, rng: np.random.Generator,
              drop_last: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row ids, features) batches over ``rows``: a plain shuffle in memory, chunk-shuffled otherwise."""
        if self.data is not None:
            perm = rng.permutation(rows)
            stop = len(perm) - len(perm) % batch_size if drop_last else len(perm)
            for i in range(0, stop, batch_size):
                ids = perm[i:i + batch_size]
                yield ids, self._finish(self.data[ids])
            return
        for ids, feats in iter_chunk_shuffled(self._read, self.cache.rows, self.chunk_rows, batch_size, rng=rng,
                                              rows=rows, drop_last=drop_last, chunks_per_block=self.chunks_per_block,
                                              workers=min(4, self.chunks_per_block)):
            yield ids, self._finish(feats)


@dataclass
class Split:
    name: str
    cache: FeatureCache
    inputs: Inputs
    rows: np.ndarray
    # training split only: valid rows outside train/val/test (beyond the label budget, or
    # unlabeled); their features may join batches (data.unlabeled_per_batch), never their labels
    unlabeled: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def labels(self) -> np.ndarray:
        return self.cache.labels[self.rows]


def build_splits(cfg: DataConfig, student: StudentConfig, unlabeled: bool = False) -> tuple[dict[str, Split], int]:
    """train / val / test splits and the number of classes.

    ``unlabeled``: train on every valid row of the store, labels or not (distillation on a
    transfer set); val and test then come from their own stores (val may be empty).
    """
    rng = np.random.default_rng(cfg.split_seed)
    cache, source = open_split_store(cfg.store, cfg.data_root, teachers=cfg.teachers or None)
    inputs = Inputs(source, student, cfg.tokenizer, cfg.decode_threads)
    if unlabeled:
        return _unlabeled_splits(cfg, student, cache, inputs)
    train_rows = cache.labeled_rows()
    if len(train_rows) == 0:
        raise ValueError(f"{cfg.store}: no valid labeled rows to train on")
    held_out = []
    splits: dict[str, Split] = {}
    for name, path, fraction in (("test", cfg.test_store, cfg.test_fraction), ("val", cfg.val_store, cfg.val_fraction)):
        if path:  # a split of its own
            splits[name] = store_split(name, path, cfg, student)
        else:  # carved out of the training rows with split_seed
            train_rows, carved = carve(train_rows, fraction, rng)
            splits[name] = Split(name, cache, inputs, carved)
            held_out.append(carved)
    train_rows = label_budget(train_rows, cache.labels, cfg.label_budget, rng)
    unlabeled = np.setdiff1d(np.flatnonzero(cache.valid), np.concatenate([train_rows, *held_out]))
    splits["train"] = Split("train", cache, inputs, train_rows, unlabeled)
    classes = source.classes or []
    num_classes = max(len(classes), int(cache.labels.max()) + 1)
    return splits, num_classes


def store_split(name: str, path: str, cfg: DataConfig, student: StudentConfig) -> Split:
    """Every valid labeled row of another store, with its own raw inputs."""
    cache, source = open_split_store(path, cfg.data_root)
    return Split(name, cache, Inputs(source, student, cfg.tokenizer, cfg.decode_threads), cache.labeled_rows())


def _unlabeled_splits(cfg: DataConfig, student: StudentConfig, cache: FeatureCache,
                      inputs: Inputs) -> tuple[dict[str, Split], int]:
    if not cfg.test_store:
        raise ValueError("data.test_store: training on unlabeled rows needs a labeled test store")
    splits = {"train": Split("train", cache, inputs, np.flatnonzero(cache.valid)),
              "test": store_split("test", cfg.test_store, cfg, student)}
    test = splits["test"]
    splits["val"] = (store_split("val", cfg.val_store, cfg, student) if cfg.val_store
                     else Split("val", test.cache, test.inputs, np.empty(0, np.int64)))
    classes = splits["test"].cache.source.get("classes") or []
    return splits, max(len(classes), int(splits["test"].cache.labels.max()) + 1)
