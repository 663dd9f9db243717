"""A finished run's student over any source: one row per input (id, predicted class and its
probability, the top k), batched, with a progress bar; an input that does not decode is a row with
its reason, never a stop. With labels, accuracy and per-class accuracy too.

The source is a config's ``[source]`` table (``CONFIG.toml`` with ``--set source.key=value``), or a
path or URL whose kind is read from it: a folder (images, or text documents for a text student), a
``.csv``/``.jsonl`` manifest, ``.tar`` shards or a brace pattern (WebDataset), ``.parquet`` files
or a folder of them.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from featcache.plumbing import atomic, storage
from featcache.plumbing.config import ConfigError, load_config, tomllib
from featcache.rawdata import InputError, Source, clean_reason
from featcache.rawdata.configured import SourceConfig, open_source_config

from .load import TextTransform, load_student

MANIFESTS = (".csv", ".jsonl", ".json")


@dataclass(frozen=True)
class _SourceTable:
    source: SourceConfig = field(default_factory=SourceConfig)


@dataclass
class Predictions:
    """``rows``: one dict per input, in source order, with the keys ``columns`` lists: ``id``,
    ``predicted`` (class name, "" where the input did not decode), ``probability``, ``top1`` ..
    ``top{k}`` and ``top1_probability`` .., ``label`` (the source's class name, "" unlabeled) and
    ``error`` (why the input did not decode, "" otherwise). ``accuracy`` and ``per_class_accuracy``
    (class name -> accuracy) are over the decoded labeled rows (None, {} without labels)."""

    rows: list[dict[str, Any]]
    columns: list[str]
    classes: list[str]
    accuracy: float | None = None
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    evaluated: int = 0  # decoded labeled rows the accuracy counts
    invalid: int = 0  # rows whose input did not decode

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)

    def write(self, path: str) -> None:
        """``.parquet`` (pyarrow) or ``.csv``, written atomically."""
        if path.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(self.rows) if self.rows else pa.table({c: [] for c in self.columns})
            atomic.write_with(path, lambda fh: pq.write_table(table, fh))
        elif path.endswith(".csv"):
            with atomic.atomic_open(path, "w", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, self.columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            raise ConfigError(f"--out {path}: write .parquet or .csv")

    def summary(self) -> str:
        if self.accuracy is None:
            return ""
        lines = [f"accuracy {self.accuracy:.4f} on {self.evaluated} labeled rows"]
        lines += [f"  {name}: {acc:.4f}" for name, acc in self.per_class_accuracy.items()]
        return "\n".join(lines)


def source_table(path: str, text: bool) -> dict[str, Any]:
    """The [source] table a path or URL stands for."""
    p = path.rstrip("/")
    low = p.lower()
    if "{" in p or low.endswith(".tar"):
        return {"kind": "webdataset", "root": p, "modality": "text" if text else "image"}
    if low.endswith((".parquet", ".arrow")) or "*" in p:
        return {"kind": "parquet", "root": p, **({"text_column": "text"} if text else {})}
    if low.endswith(MANIFESTS):
        return {"kind": "manifest", "path": p}
    if storage.is_remote(p):
        return {"kind": "parquet", "root": p, **({"text_column": "text"} if text else {})}
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: no such source (a folder, a .csv/.jsonl manifest, .tar shards, .parquet)")
    if os.path.isdir(p) and any(f.endswith((".parquet", ".arrow")) for _, _, fs in os.walk(p) for f in fs):
        return {"kind": "parquet", "root": p, **({"text_column": "text"} if text else {})}
    return {"kind": "text_folder" if text else "image_folder", "root": p}


def open_predict_source(source: Any, text: bool, overrides: Sequence[str] = ()) -> Source:
    """A Source, a [source] table (a mapping), a CONFIG.toml holding one, or a path/URL."""
    if isinstance(source, Source):
        return source
    if isinstance(source, Mapping):
        table = dict(source)
    elif str(source).endswith(".toml"):
        try:
            with open(source, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{source}: config file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML ({exc})") from exc
        if "source" not in raw:
            raise ConfigError(f"{source}: no [source] table")
        table = raw["source"]
    else:
        table = source_table(os.fspath(source), text)
    cfg = load_config(_SourceTable, data={"source": table}, overrides=overrides).source
    return open_source_config(cfg)


def _label_map(src: Source, classes: list[str]) -> np.ndarray | None:
    """Source label -> the run's class index (-1: a class the run does not know); None: unlabeled."""
    if not (src.labels >= 0).any():
        return None
    if src.classes and any(name in classes for name in src.classes):
        index = {name: i for i, name in enumerate(classes)}
        return np.array([index.get(str(name), -1) for name in src.classes], np.int64)
    top = int(src.labels.max()) + 1
    return np.array([i if i < len(classes) else -1 for i in range(top)], np.int64)


def _decode(src: Source, transform: Any, i: int) -> tuple[Any, str]:
    try:
        raw = src.load(int(i))
        return (raw if isinstance(transform, TextTransform) else transform.pixels(raw)), ""
    except InputError as exc:
        return None, clean_reason(exc)


def predict(run_dir: str | os.PathLike, source: Any, *, overrides: Sequence[str] = (), top_k: int = 5,
            batch_size: int = 64, threads: int = 2, progress: bool | None = None,
            device: str | torch.device = "cpu") -> Predictions:
    """Run a finished run's student over ``source`` (see ``open_predict_source``)."""
    if top_k < 1 or batch_size < 1:
        raise ConfigError("--top-k and --batch-size: must be >= 1")
    model, transform, classes = load_student(run_dir)
    text = isinstance(transform, TextTransform)
    src = open_predict_source(source, text, overrides)
    if (src.modality == "text") != text:
        raise ConfigError(f"the source holds {src.modality} inputs, the student of {run_dir} reads "
                          f"{'text' if text else 'images'}")
    model.to(device)
    k = min(top_k, len(classes))
    tops = [c for j in range(1, k + 1) for c in (f"top{j}", f"top{j}_probability")]
    columns = ["id", "predicted", "probability", *tops, "label", "error"]
    label_of = _label_map(src, classes)
    names = list(src.classes)
    rows: list[dict[str, Any]] = []
    hits, seen = np.zeros(len(classes)), np.zeros(len(classes))  # per class: right, counted
    bar = tqdm(total=len(src), desc="predict", unit="row", file=sys.stderr, disable=None if progress is None
               else not progress)
    with ThreadPoolExecutor(max(1, threads)) as pool, torch.no_grad():
        for start in range(0, len(src), batch_size):
            idx = list(range(start, min(start + batch_size, len(src))))
            decoded = list(pool.map(lambda i: _decode(src, transform, i), idx))
            good = [j for j, (x, _) in enumerate(decoded) if x is not None]
            probs = np.zeros((0, len(classes)), np.float32)
            if good:
                inputs = [decoded[j][0] for j in good]
                x = transform.batch(inputs) if text else _pixels_to_model(np.stack(inputs))  # decoded once, above
                x = tuple(t.to(device) for t in x) if text else x.to(device)
                probs = torch.softmax(model(x)[0].float(), 1).cpu().numpy()
            by_row = dict(zip(good, probs))
            for j, i in enumerate(idx):
                label = int(src.labels[i])
                row: dict[str, Any] = {"id": src.sample_ids[i], "label": _name(names, label), "error": decoded[j][1]}
                p = by_row.get(j)
                order = np.argsort(-p)[:k] if p is not None else []
                row["predicted"] = classes[order[0]] if p is not None else ""
                row["probability"] = float(p[order[0]]) if p is not None else math.nan
                for r in range(k):
                    row[f"top{r + 1}"] = classes[order[r]] if p is not None else ""
                    row[f"top{r + 1}_probability"] = float(p[order[r]]) if p is not None else math.nan
                rows.append({c: row[c] for c in columns})
                want = label_of[label] if label_of is not None and 0 <= label < len(label_of) else -1
                if p is not None and want >= 0:
                    seen[want] += 1
                    hits[want] += float(order[0] == want)
            bar.update(len(idx))
    bar.close()
    out = Predictions(rows, columns, classes, invalid=sum(1 for r in rows if r["error"]), evaluated=int(seen.sum()))
    if seen.sum():
        out.accuracy = float(hits.sum() / seen.sum())
        out.per_class_accuracy = {classes[c]: float(hits[c] / seen[c]) for c in range(len(classes)) if seen[c]}
    return out


def _pixels_to_model(pixels: np.ndarray) -> torch.Tensor:
    from .data import Inputs

    return Inputs.to_model(torch.from_numpy(pixels))


def _name(names: list[str], label: int) -> str:
    if label < 0:
        return ""
    return str(names[label]) if label < len(names) else str(label)


__all__ = ["Predictions", "open_predict_source", "predict", "source_table"]
