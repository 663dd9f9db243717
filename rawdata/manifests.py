"""CSV or JSONL manifests: one row per line with ``path`` or ``text``, optional ``label`` and ``id``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .decode import InputError, check_text, image_params, read_image_file
from .source import Source, SourceError


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


_CSV_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _csv_fields_up_to(length: int):
    """Let the csv module read fields as long as the whole manifest (its default limit, 131,072
    characters, stops a long text with an error that is about no row), then put the limit back:
    it is one global of the csv module, which other code in the process may rely on."""
    with _CSV_LIMIT_LOCK:
        before = csv.field_size_limit()
        csv.field_size_limit(max(before, length + 1))
        try:
            yield
        finally:
            csv.field_size_limit(before)


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
    with _csv_fields_up_to(len(text)):
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
                          else read_image_file(paths[i], max_image_pixels))
    else:
        ids = [f"{name}:{r.line}" if isinstance(r, _BadRow) else str(r.get("id") or f"row{i:08d}")
               for i, r in enumerate(rows)]
        texts = [r.reason if isinstance(r, _BadRow) else r.get("text") for r in rows]
        load = lambda i: (_raise(texts[i]) if isinstance(rows[i], _BadRow)  # noqa: E731
                          else check_text(texts[i], f"{path} row {i}"))
    if len(set(ids)) != len(ids):
        raise SourceError(f"{path}: sample ids are not unique (add an 'id' column)")
    params = {"path": os.path.abspath(path), **({"root": os.path.abspath(root)} if root else {}),
              **({"encoding": encoding} if encoding.lower().replace("_", "-") not in ("utf-8", "utf8") else {}),
              **image_params(max_image_pixels)}
    return Source("manifest", modality, ids, labels, classes, params, load)
