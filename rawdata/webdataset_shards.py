"""The ``webdataset`` source: samples grouped by key across tar shards, image (or ``txt``) and label
members read by byte offset; the sample id is the shard name plus ``__key__``."""

from __future__ import annotations

import json
import os
from typing import Any

from . import tar_shards as shards
from .decode import InputError, check_text, clean_reason, decode_image, image_params
from .source import Source, SourceError, named_labels


WDS_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


CUT_KEY = "#cut-off"  # the id key of the invalid row a cut-off shard gets


def _wds_label(fh, sample: shards.Sample, label_field: str) -> Any:
    """The label text of ``cls`` (or ``label_field`` of the ``json`` member); None when absent."""
    ext = "json" if label_field else next((e for e in ("cls", "class", "label") if e in sample.members), "")
    if ext not in sample.members:
        return None
    offset, size = sample.members[ext]
    fh.seek(offset)
    text = fh.read(size).decode("utf-8", errors="replace").strip()
    if not label_field:
        return text
    value = json.loads(text).get(label_field)
    return value if isinstance(value, str) else None if value is None else int(value)


def webdataset(root: str | list[str], extensions: list[str] | tuple[str, ...] = WDS_EXTENSIONS,
               label_field: str = "", modality: str = "image", fingerprints: dict[str, str] | None = None,
               max_image_pixels: int = 0) -> Source:
    """WebDataset tar shards (a list, or a brace pattern ``train-{000..009}.tar``). Each shard's
    headers are scanned once at open into byte offsets, so ``load(i)`` is one seek + read; the
    shards' fingerprints (member names + sizes) are recorded and checked when a store reopens it."""
    root = os.path.abspath(root) if isinstance(root, str) else [os.path.abspath(r) for r in root]
    paths = shards.shard_list(root)
    found: dict[str, str] = {}
    entries: list[tuple[str, shards.Sample]] = []
    for path in paths:
        if not os.path.isfile(path):
            raise SourceError(f"{path}: shard not found")
        try:
            index = shards.index_shard(path)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        found[os.path.basename(path)] = index.fingerprint
        entries += [(path, s) for s in index.samples]
        if index.cut:  # one invalid row says where the shard stops being readable
            entries.append((path, shards.Sample(CUT_KEY, problem=index.cut)))
    if fingerprints is not None and fingerprints != found:
        changed = sorted(k for k in set(found) | set(fingerprints) if found.get(k) != fingerprints.get(k))
        raise SourceError(f"{root}: shards changed since the store was built ({', '.join(changed[:5])}); "
                          "re-extract, or cache the student inputs in the store while the shards match")
    if not entries:
        raise SourceError(f"{root}: no samples in {len(paths)} shards")
    exts = [e.lower().lstrip(".") for e in extensions] if modality == "image" else ["txt"]
    problems: dict[int, str] = {}
    raw_labels: list[Any] = []
    fh = None
    for i, (path, sample) in enumerate(entries):
        what = f"{os.path.basename(path)}/{sample.key}"
        if fh is None or fh.name != path:  # one open per shard for its (small) label members
            if fh:
                fh.close()
            fh = open(path, "rb")  # noqa: SIM115 - closed at the next shard or after the loop
        try:
            raw_labels.append(None if sample.problem else _wds_label(fh, sample, label_field))
        except (OSError, ValueError, AttributeError) as exc:
            raw_labels.append(None)
            problems[i] = f"{what}: unreadable label ({clean_reason(exc)})"
        if sample.problem:
            problems[i] = sample.problem
        elif not any(e in sample.members for e in exts):
            problems[i] = f"{what}: no {' / '.join(exts)} member in the sample"
    if fh:
        fh.close()
    labels, classes = named_labels(raw_labels)
    ids = [f"{os.path.basename(p)}/{s.key}" for p, s in entries]
    if len(set(ids)) != len(ids):
        raise SourceError(f"{root}: sample ids are not unique (two shards with the same name?)")

    def load(i: int):
        if i in problems:
            raise InputError(problems[i])
        path, sample = entries[i]
        ext = next(e for e in exts if e in sample.members)
        what = f"{os.path.basename(path)}/{sample.key}.{ext}"
        try:
            data = shards.read_member(path, *sample.members[ext])
        except OSError as exc:
            raise InputError(f"{what}: {clean_reason(exc)}") from exc
        if modality == "text":
            return check_text(data.decode("utf-8", errors="replace").strip(), what)
        return decode_image(data, what, max_image_pixels)

    params = {"root": root if isinstance(root, str) else list(root), "extensions": list(extensions),
              "label_field": label_field, "modality": modality, "fingerprints": found,
              **image_params(max_image_pixels)}
    return Source("webdataset", modality, ids, labels, classes, params, load)
