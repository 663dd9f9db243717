"""The ``webdataset`` source: samples grouped by key across tar shards (local, or any fsspec URL),
image (or ``txt``) and label members read by byte offset; the sample id is the shard name plus
``__key__``.

Opening walks each shard's tar headers once. The result (``Source.reopen_index``: per shard its
size, member offsets, fingerprint and label values) is plain data a store keeps beside its source
description; reopening with it (``index=``) walks only the shards whose size changed, so stage 2
costs one listing per shard folder instead of a request per member.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from . import tar_shards as shards
from .decode import InputError, check_text, clean_reason, decode_image, image_params
from .remote_files import Files, normalise
from .source import Source, SourceChanged, SourceError, named_labels


WDS_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
LABEL_EXTENSIONS = ("cls", "class", "label")
INDEX_VERSION = 1
CUT_KEY = "#cut-off"  # the id key of the invalid row a cut-off shard gets


def _label_member(sample: shards.Sample, label_field: str) -> str:
    """The extension of the member holding the label: ``cls`` (or the JSON member for ``label_field``)."""
    if label_field:
        return "json" if "json" in sample.members else ""
    return next((e for e in LABEL_EXTENSIONS if e in sample.members), "")


def _parse_label(data: bytes, label_field: str) -> Any:
    text = data.decode("utf-8", errors="replace").strip()
    if not label_field:
        return text
    value = json.loads(text).get(label_field)
    return value if isinstance(value, str) else None if value is None else int(value)


def _shard_labels(files: Files, path: str, record: shards.ShardRecord, kept: dict[str, bytes],
                  label_field: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Each sample's raw label (from the label bytes the walk kept, else one ranged read), and why
    a label member could not be read."""
    labels: dict[str, Any] = {}
    errors: dict[str, str] = {}
    names = {shards.split_name(n): n for n, *_ in record.members}
    for sample in shards.samples_of(record):
        ext = _label_member(sample, label_field)
        if not ext or sample.problem:
            continue
        try:
            name = names[(sample.key, ext)]
            data = kept[name] if name in kept else shards.read_member(files, path, *sample.members[ext])
            labels[sample.key] = _parse_label(data, label_field)
        except (OSError, ValueError, AttributeError) as exc:
            errors[sample.key] = f"{shards.basename(path)}/{sample.key}: unreadable label ({clean_reason(exc)})"
    return labels, errors


def _changed(root: Any, found: Mapping[str, str], recorded: Mapping[str, str]) -> SourceChanged:
    changed = sorted(k for k in set(found) | set(recorded) if found.get(k) != recorded.get(k))
    return SourceChanged(f"{root}: shards changed since the store was built ({', '.join(changed[:5])}); "
                         "re-extract, or cache the student inputs in the store while the shards match")


def _shard_records(files: Files, paths: list[str], label_field: str, index: Mapping[str, Any] | None,
                   fingerprints: Mapping[str, str] | None, root: Any) -> tuple[list[dict[str, Any]], int]:
    """One plain record per shard: from the stored index when the shard's size still matches (and
    its members still hash to the fingerprint the store recorded), else from a walk of its headers;
    and how many shards were walked."""
    sizes = files.sizes(paths)
    usable = bool(index) and index.get("version") == INDEX_VERSION and index.get("label_field") == label_field
    stored = dict(index.get("shards", {})) if usable else {}
    out, walked = [], 0
    for path in paths:
        name, size = shards.basename(path), sizes[path]
        if size is None:
            hint = ("; stage 2 needs the shards, or the student inputs cached in the store (featcache-cache inputs)"
                    if fingerprints is not None else "")
            raise SourceError(f"{path}: shard not found{hint}")
        doc = stored.get(name)
        if doc and int(doc["size"]) == size and shards.members_fingerprint(doc["members"]) == doc["fingerprint"] \
                and (fingerprints is None or fingerprints.get(name) == doc["fingerprint"]):
            out.append(doc)
            continue
        try:
            record, kept = shards.walk_shard(files, path, size, LABEL_EXTENSIONS + ("json",))
        except (ValueError, OSError) as exc:
            raise SourceError(str(exc)) from None
        labels, errors = _shard_labels(files, path, record, kept, label_field)
        out.append({**record.plain(), "labels": labels, "label_errors": errors})
        walked += 1
    return out, walked


def webdataset(root: str | list[str], extensions: list[str] | tuple[str, ...] = WDS_EXTENSIONS,
               label_field: str = "", modality: str = "image", fingerprints: dict[str, str] | None = None,
               max_image_pixels: int = 0, *, index: Mapping[str, Any] | None = None,
               storage_options: Mapping[str, Any] | None = None) -> Source:
    """WebDataset tar shards (a list, or a brace pattern ``train-{000..009}.tar``; paths or fsspec
    URLs). ``load(i)`` is one ranged read; ``fingerprints`` (recorded by a store) must match the
    shards found; ``index`` (a store's ``reopen_index``) spares the header walk of every shard whose
    size did not change. ``storage_options`` are never recorded."""
    root = normalise(root) if isinstance(root, str) else [normalise(r) for r in root]
    paths = shards.shard_list(root)
    files = Files(storage_options)
    try:
        records, walked = _shard_records(files, paths, label_field, index, fingerprints, root)
    except OSError as exc:  # a listing refused (credentials, endpoint): the user's to fix
        raise SourceError(f"{root}: cannot list the shards ({clean_reason(exc)})") from None
    found = {doc["name"]: doc["fingerprint"] for doc in records}
    if fingerprints is not None and dict(fingerprints) != found:
        raise _changed(root, found, fingerprints)
    entries: list[tuple[str, shards.Sample]] = []
    raw_labels: list[Any] = []
    problems: dict[int, str] = {}
    exts = [e.lower().lstrip(".") for e in extensions] if modality == "image" else ["txt"]
    for path, doc in zip(paths, records):
        record = shards.ShardRecord.from_plain(doc)
        samples = shards.samples_of(record)
        if record.cut:  # one invalid row says where the shard stops being readable
            samples.append(shards.Sample(CUT_KEY, problem=record.cut))
        for sample in samples:
            i = len(entries)
            entries.append((path, sample))
            raw_labels.append(doc["labels"].get(sample.key))
            if sample.problem:
                problems[i] = sample.problem
            elif sample.key in doc["label_errors"]:
                problems[i] = doc["label_errors"][sample.key]
            elif not any(e in sample.members for e in exts):
                problems[i] = f"{record.name}/{sample.key}: no {' / '.join(exts)} member in the sample"
    if not entries:
        raise SourceError(f"{root}: no samples in {len(paths)} shards")
    labels, classes = named_labels(raw_labels)
    ids = [f"{shards.basename(p)}/{s.key}" for p, s in entries]
    if len(set(ids)) != len(ids):
        raise SourceError(f"{root}: sample ids are not unique (two shards with the same name?)")

    def load(i: int):
        if i in problems:
            raise InputError(problems[i])
        path, sample = entries[i]
        ext = next(e for e in exts if e in sample.members)
        what = f"{shards.basename(path)}/{sample.key}.{ext}"
        try:
            data = shards.read_member(files, path, *sample.members[ext])
        except shards.ShardChanged as exc:
            raise SourceChanged(f"{exc}; re-extract, or cache the student inputs while the shards match") from None
        except OSError as exc:
            raise InputError(f"{what}: {clean_reason(exc)}") from exc
        if modality == "text":
            return check_text(data.decode("utf-8", errors="replace").strip(), what)
        return decode_image(data, what, max_image_pixels)

    params = {"root": root if isinstance(root, str) else list(root), "extensions": list(extensions),
              "label_field": label_field, "modality": modality, "fingerprints": found,
              **image_params(max_image_pixels)}
    reopen = {"version": INDEX_VERSION, "kind": "webdataset", "label_field": label_field,
              "shards": {doc["name"]: doc for doc in records}}
    source = Source("webdataset", modality, ids, labels, classes, params, load, reopen_index=reopen, walked=walked)
    source.files = files  # requests and bytes read so far (tests, benchmarks)
    return source
