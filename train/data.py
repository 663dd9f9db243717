"""Stage 2's data path: splits of the store's rows, raw inputs, and cached features.

Features come from the store by row id (never from a teacher); student inputs
come from the store's cached inputs when it holds a set matching the student, else
from the source the store recorded, checked against the store's dataset
fingerprint. Features are held in memory when they fit ``max_ram_gb``, else
streamed with chunk-shuffled reads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from featcache.cache_tools import CacheError, FeatureCache, require_complete
from featcache.cache_tools.inputs import Tokenizer, find_matching, image_spec, text_spec
from featcache.plumbing.config import ConfigError
from featcache.rawdata import Source, source_of
from featcache.cache_tools.reading import iter_chunk_shuffled
from featcache.rawdata.views import render_view

from .config import StudentConfig, TrainConfig

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


class CachedInputs:
    """A store's cached student inputs (``featcache-cache inputs``): in memory when they fit
    ``max_ram_gb``, else gathered chunk by chunk from the store."""

    def __init__(self, cache: FeatureCache, name: str, max_ram_gb: float) -> None:
        self.cache, self.name = cache, name
        info = cache.inputs_info(name)
        self.kind = info["spec"]["kind"]
        arrays = info["arrays"]
        # pixels (N, K, H, W, 3); (N, H, W, 3) with one view
        self.multi_view = self.kind == "image" and len(arrays["pixels"]["shape"]) == 5
        nbytes = sum(int(np.prod(a["shape"], dtype=np.int64)) * np.dtype(a["dtype"]).itemsize for a in arrays.values())
        self.in_memory = nbytes <= max_ram_gb * GiB
        self.data = {a: cache.load_inputs(name, a) for a in arrays} if self.in_memory else None

    def _take(self, array: str, rows: np.ndarray) -> np.ndarray:
        if self.data is not None:
            return self.data[array][rows]
        return self.cache.take_inputs(self.name, array, rows)

    def pixels(self, rows: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        """(B, H, W, 3) uint8: each row's view (view 0 when ``views`` is None)."""
        rows = np.asarray(rows, dtype=np.int64)
        v = np.zeros(len(rows), np.int64) if views is None else np.asarray(views, dtype=np.int64)
        if self.data is not None and self.multi_view:
            return self.data["pixels"][rows, v]
        px = self._take("pixels", rows)
        return px[np.arange(len(rows)), v] if self.multi_view else px

    def tokens(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        return self._take("ids", rows), self._take("lengths", rows)


def tokens_to_model(ids: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids long, padding mask bool): what text students take."""
    mask = torch.arange(ids.shape[1])[None, :] < torch.from_numpy(np.asarray(lengths, np.int64))[:, None]
    return torch.from_numpy(np.ascontiguousarray(ids)).long(), mask


class Inputs:
    """A split's student inputs as model-ready tensors: gathered from the store's cached
    inputs when it has a set matching the student, else decoded (tokenized) from the raw
    inputs. Both give the same values (``views.render_view``, ``Tokenizer.encode``);
    ``origin`` says which."""

    def __init__(self, source: Source | None, student: StudentConfig, tokenizer: "str | Tokenizer" = "",
                 threads: int = 2, *, cached: CachedInputs | None = None, modality: str = "",
                 origin: str = "decoded from the raw inputs") -> None:
        self.source, self.size, self.max_length = source, student.image_size, student.max_length
        self.resize_filter = student.resize_filter
        self.cached, self.origin = cached, origin
        self.modality = modality or (source.modality if source is not None else "image")
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads))
        self.tokenizer = load_tokenizer(tokenizer) if self.modality == "text" else None
        if self.modality == "text" and self.tokenizer is None:
            raise ConfigError("data.tokenizer: text students need a local tokenizer directory")

    def _image(self, i: int, params: np.ndarray | None) -> np.ndarray:
        return render_view(self.source.load(int(i)), params, self.size, self.resize_filter)

    def pixels(self, rows: np.ndarray, params: np.ndarray | None = None,
               views: np.ndarray | None = None) -> torch.Tensor:
        """(B, H, W, 3) uint8 of each row's view: ``views`` index the cached set, ``params`` replay it."""
        if self.cached is not None:
            return torch.from_numpy(self.cached.pixels(rows, views))
        plist = [None] * len(rows) if params is None else list(params)
        return torch.from_numpy(np.stack(list(self.pool.map(self._image, rows, plist))))

    @staticmethod
    def to_model(pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], on whatever device ``pixels`` is."""
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        return x.sub_(0.5).div_(0.5)

    def batch(self, rows: np.ndarray, params: np.ndarray | None = None, views: np.ndarray | None = None,
              normalize: bool = True) -> Any:
        """The student's input for ``rows``: token (ids, mask), or images (uint8 unless ``normalize``)."""
        if self.modality == "text":
            if self.cached is not None:
                return tokens_to_model(*self.cached.tokens(rows))
            texts = [self.source.load(int(i)) for i in rows]
            return tokens_to_model(*self.tokenizer.encode(texts, self.max_length))
        px = self.pixels(rows, params, views)
        return self.to_model(px) if normalize else px


def _wanted(cache: FeatureCache, cfg: TrainConfig) -> tuple[dict[str, Any], str, Tokenizer | None]:
    """The spec of inputs this student reads, the command that caches them, and its tokenizer."""
    student = cfg.student
    if cache.source.get("modality", "image") == "text":
        path = tokenizer_path(cfg)
        if not path:
            raise ConfigError("data.tokenizer: text students need a local tokenizer directory")
        tok = Tokenizer(path)
        return (text_spec(tok, student.max_length), f"featcache-cache inputs {cache.path} --tokenizer "
                f"{path} --max-length {student.max_length}", tok)
    spec = image_spec(student.image_size, student.resize_filter)
    return spec, f"featcache-cache inputs {cache.path} --size {student.image_size} --filter {student.resize_filter}", None


def tokenizer_path(cfg: TrainConfig) -> str:
    """data.tokenizer, or a Hugging Face student's own directory: its ids must be the encoder's."""
    if cfg.data.tokenizer or not cfg.student.name.startswith("hf:"):
        return cfg.data.tokenizer
    return cfg.student.name.partition(":")[2]


def open_inputs(cache: FeatureCache, train_cfg: TrainConfig) -> Inputs:
    """Cached inputs when the store has a complete set matching the student (and cut from the
    views the store records now: ``find_matching`` checks its view digest), else the raw inputs."""
    wanted, hint, tok = _wanted(cache, train_cfg)
    cfg, student = train_cfg.data, train_cfg.student
    made = "decoded from the raw inputs" if wanted["kind"] == "image" else "tokenized from the raw texts"
    if cfg.cached_inputs == "off":
        origin = f"{made} (data.cached_inputs = off)"
    else:
        name, why = find_matching(cache, wanted)
        if name is not None:
            cached = CachedInputs(cache, name, cfg.max_ram_gb)
            where = "in memory" if cached.in_memory else "read from the store"
            return Inputs(None, student, tok or "", cfg.decode_threads, cached=cached, modality=wanted["kind"],
                          origin=f"{why}, {where}")
        if cfg.cached_inputs == "require":
            raise ConfigError(f"data.cached_inputs: 'require', but {why}; write them with `{hint}`")
        origin = f"{made} ({why}; `{hint}` caches them)"
    return Inputs(source_of(cache, cfg.data_root), student, tok or "", cfg.decode_threads, origin=origin)


def load_tokenizer(path: "str | Tokenizer") -> Tokenizer | None:
    """The fast tokenizer of a local Hugging Face directory (``encode``: texts -> ids, lengths)."""
    if isinstance(path, Tokenizer) or not path:
        return path or None
    return Tokenizer(path)


def describe_inputs(splits: dict[str, "Split"]) -> str:
    """One line: where each split's inputs come from (splits sharing a store share a phrase)."""
    groups: dict[int, list[str]] = {}
    order = {"train": 0, "val": 1, "test": 2}
    for name, split in sorted(splits.items(), key=lambda kv: order.get(kv[0], 3)):
        groups.setdefault(id(split.inputs), []).append(name)
    by_id = {id(s.inputs): s.inputs for s in splits.values()}
    return "; ".join(f"{'+'.join(names)} {by_id[key].origin}" for key, names in groups.items())


class FeatureBank:
    """The cached teacher features of one store, concatenated over the chosen teachers."""

    def __init__(self, cache: FeatureCache, teachers: tuple[str, ...], rows: np.ndarray, max_ram_gb: float,
                 standardize: bool = False) -> None:
        self.cache, self.teachers = cache, list(teachers) or cache.teachers
        if not self.teachers:
            raise CacheError(f"{cache.path}: store has no teachers; feature methods need one")
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

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Sorted row ids of a block of chunks, read with one store call per teacher."""
        if self.data is not None:
            return self.data[rows]
        return np.concatenate([self.cache.take(t, rows) for t in self.teachers], -1)

    def _block_stats(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-teacher mean vector and one scale, so every block has unit mean norm on `rows`."""
        total = np.zeros(self.dim, np.float64)
        sq = np.zeros(self.dim, np.float64)
        count = 0
        for _, feats in iter_chunk_shuffled(self._read, self.cache.rows, self.chunk_rows, 4096,
                                            rng=np.random.default_rng(0), rows=rows,
                                            chunks_per_block=self.chunks_per_block, workers=2, gather=self._gather):
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
                                              workers=2, gather=self._gather):  # 2 blocks in flight
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


def build_splits(train_cfg: TrainConfig, unlabeled: bool = False) -> tuple[dict[str, Split], int]:
    """train / val / test splits and the number of classes.

    ``unlabeled``: train on every valid row of the store, labels or not (distillation on a
    transfer set); val and test then come from their own stores (val may be empty).
    """
    cfg = train_cfg.data
    rng = np.random.default_rng(cfg.split_seed)
    cache, inputs = open_split_store(cfg.store, train_cfg, teachers=cfg.teachers or None)
    if unlabeled:
        return _unlabeled_splits(train_cfg, cache, inputs)
    train_rows = cache.labeled_rows()
    if len(train_rows) == 0:
        raise CacheError(f"{cfg.store}: no valid labeled rows to train on")
    held_out = []
    splits: dict[str, Split] = {}
    for name, path, fraction in (("test", cfg.test_store, cfg.test_fraction), ("val", cfg.val_store, cfg.val_fraction)):
        if path:  # a split of its own
            splits[name] = store_split(name, path, train_cfg)
        else:  # carved out of the training rows with split_seed
            train_rows, carved = carve(train_rows, fraction, rng)
            splits[name] = Split(name, cache, inputs, carved)
            held_out.append(carved)
    train_rows = label_budget(train_rows, cache.labels, cfg.label_budget, rng)
    unlabeled = np.setdiff1d(np.flatnonzero(cache.valid), np.concatenate([train_rows, *held_out]))
    splits["train"] = Split("train", cache, inputs, train_rows, unlabeled)
    classes = cache.source.get("classes") or []
    num_classes = max(len(classes), int(cache.labels.max()) + 1)
    return splits, num_classes


def open_split_store(path: str, cfg: TrainConfig,
                     teachers: Sequence[str] | None = None) -> tuple[FeatureCache, Inputs]:
    """A complete store and its student inputs (cached, or the raw inputs it was built from)."""
    cache = FeatureCache.open(path)
    require_complete(cache, teachers)  # with teachers named, a teacher another team is adding does not block
    return cache, open_inputs(cache, cfg)


def store_split(name: str, path: str, cfg: TrainConfig) -> Split:
    """Every valid labeled row of another store, with its own inputs."""
    cache, inputs = open_split_store(path, cfg)
    return Split(name, cache, inputs, cache.labeled_rows())


def _unlabeled_splits(train_cfg: TrainConfig, cache: FeatureCache, inputs: Inputs) -> tuple[dict[str, Split], int]:
    cfg = train_cfg.data
    if not cfg.test_store:
        raise ConfigError("data.test_store: training on unlabeled rows needs a labeled test store")
    splits = {"train": Split("train", cache, inputs, np.flatnonzero(cache.valid)),
              "test": store_split("test", cfg.test_store, train_cfg)}
    test = splits["test"]
    splits["val"] = (store_split("val", cfg.val_store, train_cfg) if cfg.val_store
                     else Split("val", test.cache, test.inputs, np.empty(0, np.int64)))
    classes = splits["test"].cache.source.get("classes") or []
    return splits, max(len(classes), int(splits["test"].cache.labels.max()) + 1)
