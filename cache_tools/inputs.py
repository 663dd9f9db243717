"""Student inputs in the store: each row's views rendered once, at a student's resolution
(images), or each row's token ids for one tokenizer and length (texts).

A student at 32-112 px otherwise decodes the same full-size images on every step of
every run. Written once as uint8 under ``inputs/<name>/pixels`` -- (N, K, H, W, 3), or
(N, H, W, 3) when the store has one view -- they come back at memory speed. Every
view is rendered by ``views.render_view`` from the view parameters the store recorded,
the function stage 2 decodes with, so a cached input is bitwise the decoded one and
each row's inputs correspond to its cached features view by view.

The spec (fingerprinted with the arrays' shapes) is what a student must match to use
them: kind, size, resize filter, render version, and the digest of the store's view
parameters (``view_digest``: the pixels are right only while the store records the
views they were cut with); Pillow's version is recorded too, since another resampler
may round differently. Rows that are invalid in the store hold zeros. Partitions and done markers are the store's own, so a cut-off run resumes.

Texts: ``inputs/<name>/ids`` (N, L) int32, padded with the tokenizer's pad id, and
``inputs/<name>/lengths`` (N,) int32, from ``encode_texts``, the function stage 2
tokenizes with; the spec names the tokenizer by the SHA-256 of its ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .cache import FeatureCache
from .errors import CacheError
from featcache.plumbing.errors import UsageError
from featcache.plumbing.paths import resolve_path
from featcache.rawdata import InputError, Source
from featcache.rawdata.views import EVAL_VIEW, RESIZE_FILTERS, render_view

RENDER_VERSION = 1  # bump when render_view's (or encode_texts') output changes for the same spec
INFO_KEYS = ("pillow",)  # recorded, not matched: a student asks for size and filter, not a Pillow release
Progress = Callable[[int, int], None]


def image_spec(size: int, resize_filter: str = "bilinear") -> dict[str, Any]:
    """What a cached image input is: a student reading the store asks for the same."""
    import PIL

    if size < 1:
        raise UsageError(f"size must be >= 1, got {size}")
    if resize_filter not in RESIZE_FILTERS:
        raise UsageError(f"filter must be one of {', '.join(RESIZE_FILTERS)}, got {resize_filter!r}")
    return {"kind": "image", "size": int(size), "filter": resize_filter, "channels": 3,
            "render_version": RENDER_VERSION, "pillow": PIL.__version__}


class Tokenizer:
    """A fast tokenizer from a local Hugging Face directory (``tokenizer.json``), named by its hash."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        path = resolve_path(path)
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{path}: no tokenizer.json (a Hugging Face fast tokenizer directory)")
        with open(file, "rb") as fh:
            self.sha256 = hashlib.sha256(fh.read()).hexdigest()
        self.tok = HFTokenizer.from_file(file)
        self.pad_id = self.tok.token_to_id("[PAD]") or 0
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (B, max_length) int32 padded with pad_id, lengths (B,) int32): what students read."""
        ids = np.full((len(texts), max_length), self.pad_id, np.int32)
        lengths = np.zeros(len(texts), np.int32)
        for row, enc in enumerate(self.tok.encode_batch(texts)):
            toks = enc.ids[:max_length]
            ids[row, :len(toks)] = toks
            lengths[row] = len(toks)
        return ids, lengths


def text_spec(tokenizer: Tokenizer, max_length: int) -> dict[str, Any]:
    if max_length < 1:
        raise UsageError(f"max_length must be >= 1, got {max_length}")
    return {"kind": "text", "tokenizer_sha256": tokenizer.sha256, "max_length": int(max_length),
            "pad_id": int(tokenizer.pad_id), "render_version": RENDER_VERSION}


def view_digest(cache: FeatureCache) -> str:
    """SHA-256 of the views each row's image inputs are cut from: the view count, the parameter
    names, and the recorded view parameters (a store without them renders the eval view).

    Matched by ``find_matching`` against the store as it is now, so inputs cut from other views
    than the store records (an index rewritten, or a set copied from another store with the same
    rows) are never paired with features of other crops. Reads the (N, K, P) float32 params once
    per open store, index-sized."""
    h = hashlib.sha256(json.dumps({"views": cache.views, "params": cache.view_param_names}).encode())
    if cache.view_param_names:
        h.update(np.ascontiguousarray(cache.view_params, dtype=np.float32).tobytes())
    return h.hexdigest()


def default_name(spec: dict[str, Any]) -> str:
    if spec["kind"] == "text":
        return f"tokens{spec['max_length']}_{spec['tokenizer_sha256'][:8]}"
    return f"{spec['kind']}{spec['size']}_{spec['filter']}"


def _describe(spec: dict[str, Any]) -> str:
    if spec.get("kind") == "text":
        return f"{spec.get('max_length')} tokens of tokenizer {str(spec.get('tokenizer_sha256'))[:8]}"
    return f"{spec.get('size')} px {spec.get('filter')}"


def _with_views(cache: FeatureCache, wanted: dict[str, Any]) -> dict[str, Any]:
    """Image specs are matched against the store's views as they are now, whoever builds ``wanted``."""
    if wanted.get("kind") != "image" or "view_digest" in wanted:
        return wanted
    return {**wanted, "view_digest": view_digest(cache)}


def _differing(spec: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The keys of ``wanted`` an input set's spec does not hold (``INFO_KEYS`` are never matched)."""
    return [k for k, v in wanted.items() if k not in INFO_KEYS and spec.get(k) != v]


def _mismatch(spec: dict[str, Any], wanted: dict[str, Any]) -> str:
    """How an input set differs from ``wanted``: its size and filter, and a word when only its views do."""
    if _differing(spec, wanted) != ["view_digest"]:
        return _describe(spec)
    if "view_digest" not in spec:
        return f"{_describe(spec)}, written before sets recorded their views"
    return f"{_describe(spec)}, cut from other views than the store records"


def find_matching(cache: FeatureCache, wanted: dict[str, Any]) -> tuple[str | None, str]:
    """The name of a complete input set matching ``wanted`` (else None), and one line saying why.

    An image set must also hold the store's current ``view_digest``. A set without one (written
    before the digest was recorded) does not match: whether its pixels were cut with the views the
    store records now cannot be checked, and decoding is slower but never wrong, while a stale set
    would pair every view with another crop's features without a sign. Rewriting it is the one
    command the caller's log line names (``cache_inputs`` then writes beside it, ``free_name``).
    """
    names = cache.inputs
    if not names:
        return None, f"{cache.path} has no cached student inputs"
    wanted = _with_views(cache, wanted)
    others = []
    for name in names:
        spec = cache.inputs_info(name)["spec"]
        if _differing(spec, wanted):
            others.append(f"{name} ({_mismatch(spec, wanted)})")
            continue
        done = len(cache.inputs_done(name))
        if done < cache.num_partitions:
            others.append(f"{name} (incomplete: {done} of {cache.num_partitions} partitions)")
            continue
        return name, f"cached inputs {name!r} ({_describe(spec)})"
    return None, f"{cache.path} has inputs {', '.join(others)}, none at {_describe(wanted)}"


def free_name(cache: FeatureCache, spec: dict[str, Any]) -> str:
    """Where ``featcache-cache inputs`` can write ``spec``: its default name, or, when a set of
    another spec holds that name (an older set without a view digest), the name plus 8 hex of
    the store's view digest."""
    name = default_name(spec)
    if name not in cache.inputs or spec.get("kind") != "image":
        return name
    wanted = _with_views(cache, spec)
    if not _differing(cache.inputs_info(name)["spec"], wanted):
        return name
    return f"{name}_{wanted['view_digest'][:8]}"


def _views_of(cache: FeatureCache, start: int, stop: int) -> np.ndarray:
    """(rows, K, P) view parameters of rows start:stop (the eval view when the store records none)."""
    if cache.view_param_names:
        return cache.view_params[start:stop]
    return np.tile(EVAL_VIEW, (stop - start, cache.views, 1))


def render_row(source: Source, row: int, params: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """(K, H, W, 3) uint8: every view of one row, as stage 2 would decode it."""
    image = source.load(row)
    return np.stack([render_view(image, params[v], spec["size"], spec["filter"])
                     for v in range(len(params))])


def render_partition(cache: FeatureCache, source: Source, p: int, spec: dict[str, Any],
                     pool: ThreadPoolExecutor) -> np.ndarray:
    start, stop = cache.partition_range(p)
    valid = cache.valid[start:stop]
    params = _views_of(cache, start, stop)
    size = spec["size"]
    out = np.zeros((stop - start, cache.views, size, size, 3), np.uint8)

    def one(j: int) -> None:
        try:
            out[j] = render_row(source, start + j, params[j], spec)
        except InputError as exc:
            raise CacheError(f"{source.sample_ids[start + j]}: valid in the store but fails now ({exc}); "
                             "the raw inputs changed since the store was written") from exc

    list(pool.map(one, np.flatnonzero(valid)))
    return out if cache.views > 1 else out[:, 0]


@dataclass
class InputsSummary:
    name: str
    spec: dict[str, Any]
    shape: tuple[int, ...]
    partitions_written: int
    partitions_skipped: int
    seconds: float
    rows_written: int
    nbytes: int  # of every array of the set


def _tokenize_partition(cache: FeatureCache, source: Source, p: int, tokenizer: Tokenizer,
                        max_length: int) -> dict[str, np.ndarray]:
    start, stop = cache.partition_range(p)
    valid = cache.valid[start:stop]
    ids = np.full((stop - start, max_length), tokenizer.pad_id, np.int32)
    lengths = np.zeros(stop - start, np.int32)
    rows = np.flatnonzero(valid)
    try:
        texts = [source.load(start + int(j)) for j in rows]
    except InputError as exc:
        raise CacheError(f"{cache.path}: a row valid in the store fails now ({exc}); the raw inputs changed") from exc
    if len(rows):
        ids[rows], lengths[rows] = tokenizer.encode(texts, max_length)
    return {"ids": ids, "lengths": lengths}


def cache_inputs(cache: FeatureCache, source: Source, size: int = 0, resize_filter: str = "bilinear", *,
                 tokenizer: str = "", max_length: int = 128, name: str = "", threads: int = 2,
                 compressor: str = "none", progress: Progress | None = None) -> InputsSummary:
    """Render (images, at ``size``) or tokenize (texts, with ``tokenizer``) and write every row's
    student input; partitions already marked done are skipped. Without ``name``, ``free_name``:
    the rerun of a cut-off run finds the same name, and an older set never blocks a new one."""
    if source.modality == "image" and size < 1:
        raise UsageError(f"{cache.path}: an image store: give the student's image size (--size)")
    if source.modality == "text" and not tokenizer:
        raise UsageError(f"{cache.path}: a text store: give the student's tokenizer directory (--tokenizer)")
    missing = cache.num_partitions - len(cache.index.done())
    if missing:
        raise CacheError(f"{cache.path}: the index has {missing} of {cache.num_partitions} partitions missing; "
                         "finish the extraction first (the view parameters come from it)")
    if source.modality == "text":
        tok = Tokenizer(tokenizer)
        spec = text_spec(tok, max_length)
        arrays = {"ids": ((max_length,), "int32"), "lengths": ((), "int32")}
        shape: tuple[int, ...] = (cache.rows, max_length)
        make = lambda p, _pool: _tokenize_partition(cache, source, p, tok, max_length)  # noqa: E731
    else:
        spec = {**image_spec(size, resize_filter), "view_digest": view_digest(cache)}
        row_shape = (cache.views, size, size, 3) if cache.views > 1 else (size, size, 3)
        arrays = {"pixels": (row_shape, "uint8")}
        shape = (cache.rows, *row_shape)
        make = lambda p, pool: {"pixels": render_partition(cache, source, p, spec, pool)}  # noqa: E731
    name = name or free_name(cache, spec)
    cache.add_inputs(name, arrays, spec, compressor=compressor)
    done = cache.input_set(name).done()
    todo = [p for p in range(cache.num_partitions) if p not in done]
    t0, rows = time.time(), 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for k, p in enumerate(todo):
            cache.write_inputs_partition(p, name, make(p, pool))
            a, b = cache.partition_range(p)
            rows += b - a
            if progress:
                progress(k + 1, len(todo))
    nbytes = sum(int(np.prod((cache.rows, *row), dtype=np.int64)) * np.dtype(dt).itemsize
                 for row, dt in arrays.values())
    return InputsSummary(name, spec, shape, len(todo), len(done), time.time() - t0, rows, nbytes)
