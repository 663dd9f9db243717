"""Raw inputs of a store's rows, shared by extraction (stage 1) and training (stage 2).

A source lists its rows (stable sample ids, labels) and loads one row's raw
input: an RGB PIL image or a string. Its ``describe()`` is what a store records
under ``source``, so stage 2 can reopen the same inputs (optionally from another
root) without knowing how stage 1 was configured.

Kinds: ``image_folder`` (one sub-folder per class, or flat = unlabeled),
``manifest`` (CSV or JSONL with ``path`` or ``text``, optional ``label`` and ``id``),
``fashion_mnist`` (the four standard idx files, optionally gzipped),
``text_folder`` (one sub-folder per class, one document per ``.txt`` file, like the
BBC News corpus), and ``text_categories`` (one file per class, entries separated by
``%`` lines, like Debian's fortunes).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import re
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import shards

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
FASHION_MNIST_DIRS = ("/usr/share/dataset-fashion-mnist", "/usr/share/fashion-mnist",
                      "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")


class SourceError(ValueError):
    """The source as configured cannot be listed (bad path, bad manifest)."""


class InputError(Exception):
    """One row's input cannot be read or decoded; the row is marked invalid."""


@dataclass
class Source:
    kind: str
    modality: str  # "image" or "text"
    sample_ids: list[str]
    labels: np.ndarray
    classes: list[str]
    params: dict[str, Any]
    _load: Callable[[int], Any] = field(repr=False)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def load(self, i: int) -> Any:
        """The raw input of row ``i``: an RGB PIL image or a non-empty string; InputError if unusable."""
        return self._load(i)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "modality": self.modality, "classes": list(self.classes), **self.params}


_ADDRESS = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")
_PIXEL_LOCK = threading.Lock()
_raised = {"users": 0, "saved": None}  # decodes now running under a raised PIL limit, and PIL's own value


def clean_reason(exc: BaseException) -> str:
    """The decoder's message without object reprs (``<_io.BytesIO object at 0x...>``), which change
    between runs; the exception's type when it is not one of the usual decode failures."""
    text = _ADDRESS.sub("", str(exc)).strip() or "no message"
    usual = isinstance(exc, (InputError, OSError, ValueError, SyntaxError)) and type(exc).__module__ == "builtins"
    return text if usual else f"{type(exc).__name__}: {text}"


@contextlib.contextmanager
def _pil_limit(limit: int):
    """Let PIL's own bomb checks (in open and, for GIF/TIFF frames, in load) accept images up to
    ``limit`` while any decode needs it. PIL keeps one global, so it is raised only when the
    configured limit is above it, under a lock and counted, and restored by the last decode out;
    at the default nothing global is touched."""
    from PIL import Image

    with _PIXEL_LOCK:
        original = _raised["saved"] if _raised["users"] else Image.MAX_IMAGE_PIXELS
        raise_it = original is not None and limit > original
        if raise_it:
            if _raised["users"] == 0:
                _raised["saved"] = Image.MAX_IMAGE_PIXELS
            _raised["users"] += 1
            Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limit)
    try:
        yield
    finally:
        if raise_it:
            with _PIXEL_LOCK:
                _raised["users"] -= 1
                if _raised["users"] == 0:
                    Image.MAX_IMAGE_PIXELS = _raised["saved"]


def pixel_limit(max_image_pixels: int = 0) -> int:
    """The pixel limit in force: the configured one, or PIL's (``Image.MAX_IMAGE_PIXELS``) for 0."""
    from PIL import Image

    with _PIXEL_LOCK:
        pil = _raised["saved"] if _raised["users"] else Image.MAX_IMAGE_PIXELS
    return int(max_image_pixels or pil or 0)


def _decode_image(data: bytes, what: str, max_image_pixels: int = 0):
    """An RGB image, or InputError naming ``what``: every failure of the decoder is about this one
    file (a decompression bomb, a plugin that raises something unexpected), never a reason to stop."""
    from PIL import Image

    if not data:
        raise InputError(f"{what}: empty file")
    limit = pixel_limit(max_image_pixels)
    try:
        with _pil_limit(limit):
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if limit and width * height > limit:
                raise InputError(f"{what}: {width} x {height} = {width * height} pixels is over the limit of "
                                 f"{limit} (source.max_image_pixels); a decompression bomb?")
            img.load()
            return img.convert("RGB")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this row's, see the docstring
        raise InputError(f"{what}: cannot decode image ({clean_reason(exc)})") from exc


def _read_image_file(path: str, max_image_pixels: int = 0):
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or clean_reason(exc)})") from exc
    return _decode_image(data, path, max_image_pixels)


def _check_text(text: Any, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what}: empty text")
    return text


def _image_params(max_image_pixels: int) -> dict[str, Any]:
    """Recorded only when set, so stores made before the option keep resuming."""
    return {"max_image_pixels": int(max_image_pixels)} if max_image_pixels else {}


def image_folder(root: str, max_image_pixels: int = 0) -> Source:
    if not os.path.isdir(root):
        raise SourceError(f"{root}: image folder not found")
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    classes = subdirs
    entries: list[tuple[str, int]] = []
    if subdirs:
        for label, name in enumerate(subdirs):
            for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
                entries += [(os.path.relpath(os.path.join(dirpath, f), root), label)
                            for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
    else:
        entries = [(f, -1) for f in sorted(os.listdir(root)) if f.lower().endswith(IMAGE_SUFFIXES)]
    if not entries:
        raise SourceError(f"{root}: no images found (expected one sub-folder per class, or images)")
    ids = [e[0] for e in entries]
    return Source("image_folder", "image", ids, np.array([e[1] for e in entries], np.int64), classes,
                  {"root": os.path.abspath(root), **_image_params(max_image_pixels)},
                  lambda i: _read_image_file(os.path.join(root, ids[i]), max_image_pixels))


@dataclass
class _BadRow:
    """A manifest line that cannot be decoded: it becomes an invalid row, not a refused manifest."""
    line: int
    reason: str


def _bad_text(value: Any) -> str | None:
    """Why a decoded value is unusable text: bytes the encoding could not decode (kept as lone
    surrogates by ``surrogateescape``), or lone surrogates from JSON escapes; None when fine."""
    for item in (value.values() if isinstance(value, dict) else [value]):
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                ch = ord(item[exc.start])
                return f"byte 0x{ch - 0xDC00:02x}" if 0xDC80 <= ch <= 0xDCFF else f"character U+{ch:04X}"
    return None


def _manifest_rows(path: str, encoding: str = "utf-8") -> list[dict[str, Any] | _BadRow]:
    if not os.path.isfile(path):
        raise SourceError(f"{path}: manifest not found")
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode(encoding, errors="surrogateescape")
    except LookupError as exc:
        raise SourceError(f"source.encoding: unknown encoding {encoding!r}") from exc
    where = f"is not valid {encoding} text (fix the line, or set source.encoding if the file uses another)"
    rows: list[dict[str, Any] | _BadRow] = []
    if path.endswith((".jsonl", ".json")):
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            bad = _bad_text(line)
            if bad:
                rows.append(_BadRow(n, f"{path}:{n}: {bad} {where}"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append(_BadRow(n, f"{path}:{n}: not valid JSON ({exc.msg})"))
                continue
            if not isinstance(row, dict) or _bad_text(row):
                rows.append(_BadRow(n, f"{path}:{n}: " + (f"{_bad_text(row)} {where}" if isinstance(row, dict)
                                                          else "not a JSON object")))
                continue
            rows.append(row)
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames and _bad_text(dict(enumerate(reader.fieldnames))):
        raise SourceError(f"{path}:1: the header {where}")
    for row in reader:
        bad = _bad_text(row)
        rows.append(_BadRow(reader.line_num, f"{path}:{reader.line_num}: {bad} {where}") if bad else row)
    return rows


def _manifest_labels(rows: list[dict[str, Any] | _BadRow]) -> tuple[np.ndarray, list[str]]:
    labels_raw = [None if isinstance(r, _BadRow) else r.get("label") for r in rows]
    named = [lab for lab in labels_raw if lab not in (None, "") and not str(lab).lstrip("-").isdigit()]
    classes = sorted(set(map(str, named)))
    to_int = {c: i for i, c in enumerate(classes)}
    labels = np.array([-1 if lab in (None, "") else to_int.get(str(lab), None) if named else int(lab)
                       for lab in labels_raw], dtype=np.int64)
    return labels, classes


def _raise(reason: str):
    raise InputError(reason)


def manifest(path: str, root: str | None = None, encoding: str = "utf-8", max_image_pixels: int = 0) -> Source:
    """CSV or JSONL rows; a line that cannot be decoded (a bad byte, broken JSON) is an invalid row
    whose reason names the file and line, and its id is ``<manifest name>:<line>``."""
    rows = _manifest_rows(path, encoding)
    good = [r for r in rows if not isinstance(r, _BadRow)]
    if not good:
        raise SourceError(f"{path}: manifest has no rows" + (f" that decode ({rows[0].reason})" if rows else ""))
    modality = "text" if "text" in good[0] else "image"
    if modality == "image" and "path" not in good[0]:
        raise SourceError(f"{path}: manifest needs a 'path' or a 'text' column")
    base = root or os.path.dirname(os.path.abspath(path))
    labels, classes = _manifest_labels(rows)
    name = os.path.basename(path)
    if modality == "image":
        ids = [f"{name}:{r.line}" if isinstance(r, _BadRow) else str(r.get("id") or r["path"]) for r in rows]
        paths = [None if isinstance(r, _BadRow) else r["path"] if os.path.isabs(r["path"])
                 else os.path.join(base, r["path"]) for r in rows]
        load = lambda i: (_raise(rows[i].reason) if paths[i] is None  # noqa: E731
                          else _read_image_file(paths[i], max_image_pixels))
    else:
        ids = [f"{name}:{r.line}" if isinstance(r, _BadRow) else str(r.get("id") or f"row{i:08d}")
               for i, r in enumerate(rows)]
        texts = [r.reason if isinstance(r, _BadRow) else r.get("text") for r in rows]
        load = lambda i: (_raise(texts[i]) if isinstance(rows[i], _BadRow)  # noqa: E731
                          else _check_text(texts[i], f"{path} row {i}"))
    if len(set(ids)) != len(ids):
        raise SourceError(f"{path}: sample ids are not unique (add an 'id' column)")
    params = {"path": os.path.abspath(path), **({"root": os.path.abspath(root)} if root else {}),
              **({"encoding": encoding} if encoding.lower().replace("_", "-") not in ("utf-8", "utf8") else {}),
              **_image_params(max_image_pixels)}
    return Source("manifest", modality, ids, labels, classes, params, load)


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


def text_categories(root: str) -> Source:
    if not os.path.isdir(root):
        raise SourceError(f"{root}: text corpus folder not found")
    files = sorted(f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f))
                   and not f.endswith((".dat", ".u8")) and not f.startswith("."))
    ids, labels, texts = [], [], []
    for label, name in enumerate(files):
        with open(os.path.join(root, name), encoding="utf-8", errors="replace") as fh:
            entries, current = [], []
            for line in fh:
                if line.rstrip("\n") == "%":
                    entries.append("".join(current))
                    current = []
                else:
                    current.append(line)
            entries.append("".join(current))
        for j, text in enumerate(e for e in entries if e.strip()):
            ids.append(f"{name}/{j:06d}")
            labels.append(label)
            texts.append(text.strip())
    if not ids:
        raise SourceError(f"{root}: no text entries found")
    return Source("text_categories", "text", ids, np.array(labels, np.int64), files,
                  {"root": os.path.abspath(root)}, lambda i: _check_text(texts[i], ids[i]))


def _read_document(path: str) -> str:
    """UTF-8, or Latin-1 for the odd legacy file (BBC News has one): never a decode failure."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return _check_text(text.strip(), path)


def text_folder(root: str) -> Source:
    if not os.path.isdir(root):
        raise SourceError(f"{root}: text folder not found")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    ids: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, name)) if f.endswith(".txt"))
        ids += [f"{name}/{f}" for f in files]
        labels += [label] * len(files)
    if not ids:
        raise SourceError(f"{root}: no .txt documents found (expected one sub-folder per class)")
    return Source("text_folder", "text", ids, np.array(labels, np.int64), classes, {"root": os.path.abspath(root)},
                  lambda i: _read_document(os.path.join(root, ids[i])))


# -- sharded formats (readers in shards.py) -----------------------------------------------------
WDS_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CUT_KEY = "#cut-off"  # the id key of the invalid row a cut-off shard gets


def _named_labels(values: list[Any], names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Ints stay ints (with ``names`` as classes when known); strings become indices into their sorted set."""
    strings = [v for v in values if isinstance(v, str) and not v.lstrip("-").isdigit()]
    if strings:
        classes = sorted(set(strings))
        to_int = {c: i for i, c in enumerate(classes)}
        return np.array([to_int.get(v, -1) if isinstance(v, str) else -1 for v in values], np.int64), classes
    return np.array([-1 if v in (None, "") else int(v) for v in values], np.int64), list(names or [])


def parquet(root: str, image_column: str = "image", path_column: str = "", text_column: str = "",
            label_column: str = "label", id_column: str = "", max_image_pixels: int = 0) -> Source:
    """A .parquet file or a folder of them (sorted), e.g. a Hugging Face dataset's Parquet export.
    Only the id and label columns are read at open; ``load(i)`` reads the row group holding row i."""
    try:
        files = shards.parquet_files(root)
    except FileNotFoundError as exc:
        raise SourceError(str(exc)) from None
    if not files:
        raise SourceError(f"{root}: no .parquet files found")
    try:
        rows = shards.ParquetRows(files)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for an unreadable file
        raise SourceError(f"{root}: cannot read Parquet ({clean_reason(exc)})") from exc
    schema = rows.files[0].schema_arrow
    column = text_column or path_column or image_column
    for key, name in (("text_column" if text_column else "path_column" if path_column else "image_column", column),
                      ("id_column", id_column), ("label_column", label_column if label_column != "label" else "")):
        if name and name not in schema.names:
            raise SourceError(f"source.{key}: {files[0]} has no column {name!r} (columns: {', '.join(schema.names)})")
    n = rows.total
    try:
        if label_column in schema.names:
            labels, classes = _named_labels(rows.column(label_column), shards.hf_class_names(schema, label_column))
        else:
            labels, classes = np.full(n, -1, np.int64), []
        ids = ([str(v) for v in rows.column(id_column)] if id_column
               else ["{}:{}".format(*rows.where(i)) for i in range(n)])
    except Exception as exc:  # noqa: BLE001 - a file without the column, a corrupt page: pyarrow's own types
        raise SourceError(f"{root}: cannot read the id/label columns ({clean_reason(exc)})") from exc
    if len(set(ids)) != len(ids):
        raise SourceError(f"{root}: sample ids are not unique (set source.id_column to a unique column)")

    def load(i: int):
        what = "{}:{}".format(*rows.where(i))
        try:
            value = rows.cell(i, column)
        except Exception as exc:  # noqa: BLE001 - a corrupt page is this row's problem
            raise InputError(f"{what}: cannot read column {column!r} ({clean_reason(exc)})") from exc
        if text_column:
            return _check_text(value, what)
        if path_column:
            if not isinstance(value, str) or not value:
                raise InputError(f"{what}: empty path")
            base = os.path.dirname(rows.path_of(i))
            return _read_image_file(value if os.path.isabs(value) else os.path.join(base, value), max_image_pixels)
        if isinstance(value, dict):  # Hugging Face's Image feature: {"bytes": ..., "path": ...}
            value = value.get("bytes")
        if not isinstance(value, (bytes, bytearray)):
            raise InputError(f"{what}: no image bytes in column {column!r}")
        return _decode_image(bytes(value), what, max_image_pixels)

    params = {"root": os.path.abspath(root), "image_column": image_column, "path_column": path_column,
              "text_column": text_column, "label_column": label_column, "id_column": id_column,
              **_image_params(max_image_pixels)}
    return Source("parquet", "text" if text_column else "image", ids, labels, classes, params, load)


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
    labels, classes = _named_labels(raw_labels)
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
            return _check_text(data.decode("utf-8", errors="replace").strip(), what)
        return _decode_image(data, what, max_image_pixels)

    params = {"root": root if isinstance(root, str) else list(root), "extensions": list(extensions),
              "label_field": label_field, "modality": modality, "fingerprints": found,
              **_image_params(max_image_pixels)}
    return Source("webdataset", modality, ids, labels, classes, params, load)


def subset(parent: dict[str, Any], rows: list[int], root: str | None = None, keep_labels: bool = False) -> Source:
    """Some rows of another source: a labeled subset, or (labels hidden) a transfer set from a pool."""
    base = open_source(parent, root)
    idx = np.asarray(rows, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(base)):
        raise SourceError(f"subset rows out of range for a source of {len(base)} rows")
    labels = base.labels[idx] if keep_labels else np.full(len(idx), -1, np.int64)
    params = {"parent": parent, "rows": idx.tolist(), **({"keep_labels": True} if keep_labels else {})}
    return Source("subset", base.modality, [base.sample_ids[i] for i in idx], labels, base.classes, params,
                  lambda i: base.load(int(idx[i])))


KINDS: dict[str, Callable[..., Source]] = {
    "image_folder": image_folder, "manifest": manifest, "fashion_mnist": fashion_mnist,
    "text_folder": text_folder, "text_categories": text_categories, "subset": subset,
    "parquet": parquet, "webdataset": webdataset,
}


def open_source(description: dict[str, Any], root: str | None = None) -> Source:
    """Reopen a source from what a store recorded; ``root`` relocates its files."""
    desc = dict(description)
    kind = desc.pop("kind", None)
    if kind not in KINDS:
        raise SourceError(f"unknown source kind {kind!r} (known: {', '.join(KINDS)})")
    for key in ("modality", "classes") if kind != "webdataset" else ("classes",):
        desc.pop(key, None)
    limit = desc.pop("limit", None)
    if root and kind == "webdataset":  # the same shard names (patterns kept) in another folder
        recorded = desc["root"]
        moved = [os.path.join(root, os.path.basename(r)) for r in ([recorded] if isinstance(recorded, str) else recorded)]
        desc["root"] = moved[0] if isinstance(recorded, str) else moved
    elif root and kind == "parquet" and str(desc.get("root", "")).endswith(".parquet"):
        desc["root"] = os.path.join(root, os.path.basename(desc["root"]))
    elif root:
        desc["root"] = root
    if kind == "subset":
        return subset(desc["parent"], desc["rows"], root, bool(desc.get("keep_labels", False)))
    if kind == "manifest" and root:
        desc["path"] = os.path.join(root, os.path.basename(desc["path"]))
    try:
        source = KINDS[kind](**desc)
    except TypeError as exc:
        raise SourceError(f"source {kind}: {exc}") from exc
    return head(source, limit) if limit else source


def head(source: Source, limit: int) -> Source:
    """The first ``limit`` rows (recorded as ``limit`` so the same rows reopen later)."""
    if limit <= 0 or limit >= len(source):
        return source
    return Source(source.kind, source.modality, source.sample_ids[:limit], source.labels[:limit],
                  source.classes, {**source.params, "limit": int(limit)}, source._load)
