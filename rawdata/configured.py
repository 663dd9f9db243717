"""The ``[source]`` table of a config: where a dataset's raw inputs are, and opening them.

Stage 1 extracts from it; stage 2 predicts over it (``featcache-train predict --source
CONFIG.toml``), so it lives below both stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from featcache.plumbing import storage
from featcache.plumbing.config import ConfigError
from featcache.plumbing.paths import resolve_path
from featcache.plumbing.storage import storage_field

from .kinds import KINDS
from .source import Source, head


@dataclass(frozen=True)
class SourceConfig:
    kind: Literal["fashion_mnist", "image_folder", "manifest", "text_folder", "text_categories", "parquet",
                  "webdataset"] = "fashion_mnist"
    root: str = ""  # folder of the data ("" = Debian's Fashion-MNIST location); pkg:package/dir inside a package;
    # parquet: a .parquet file, a glob, a folder of them (or of save_to_disk .arrow files);
    # webdataset: tar shards, a brace pattern (a-{000..009}.tar); both: a local path or an fsspec URL
    # (s3://bucket/train-{000000..000099}.tar, gs://, az://, ...)
    shards: tuple[str, ...] = ()  # webdataset: a list of shards or patterns instead of root
    path: str = ""  # manifest file (kind = "manifest")
    split: str = "train"  # fashion_mnist: train or test; recorded in the store for every kind
    limit: int = 0  # first N rows only (0 = all)
    download: bool = False  # fashion_mnist: fetch with torchvision when online (into root or ~/.cache)
    encoding: str = "utf-8"  # manifest: text encoding of the CSV/JSONL file (a line that fails is an invalid row)
    max_image_pixels: int = 0  # image sources: larger images are invalid rows (0 = PIL's default limit)
    image_column: str = "image"  # parquet: image bytes, or a struct with a "bytes" field (Hugging Face Image)
    path_column: str = ""  # parquet: image paths (relative to the Parquet file) instead of image bytes
    text_column: str = ""  # parquet: text inputs (makes a text source)
    label_column: str = "label"  # parquet: ints or class names (a missing "label" column = unlabeled)
    id_column: str = ""  # parquet: unique sample ids ("" = <file name>:<row>)
    extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")  # webdataset: image member, first present
    label_field: str = ""  # webdataset: label from this field of the .json member ("" = the .cls member)
    modality: Literal["image", "text"] = "image"  # webdataset: text reads the .txt member
    # [source.storage]: fsspec options for s3:// gs:// az:// shards and Parquet files (endpoint_url,
    # profile, anon, key, secret, ...), over [output.storage]; never saved anywhere. --storage-option
    # KEY=VALUE overrides both. Stage 2 reopens the source with [data.storage] / --storage-option.
    storage: dict[str, Any] = storage_field()

    def validate(self) -> list[str]:
        import codecs
        errors = []
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            errors.append(f"encoding: unknown encoding {self.encoding!r}")
        if self.max_image_pixels < 0:
            errors.append("max_image_pixels: must be >= 0 (0 = PIL's default)")
        return errors



def source_options(cfg: SourceConfig) -> dict[str, Any]:
    """fsspec options of the source's files: [output.storage] < [source.storage] < --storage-option."""
    return {**cfg.storage, **storage.snapshot()["flags"]}


def open_source_config(cfg: SourceConfig, index: dict[str, Any] | None = None) -> Source:
    """The configured source; ``index`` is what a store kept from opening it before (a resume)."""
    kw: dict[str, Any] = {}
    root = resolve_path(cfg.root)  # pkg:package/dir -> the folder inside the installed package
    if cfg.kind == "fashion_mnist":
        kw = {"root": root or None, "split": cfg.split, "download": cfg.download}
    elif cfg.kind == "manifest":
        if not cfg.path:
            raise ConfigError("source.path: a manifest source needs the manifest file")
        kw = {"path": resolve_path(cfg.path), "root": root or None, "encoding": cfg.encoding,
              "max_image_pixels": cfg.max_image_pixels}
    elif cfg.kind == "parquet":
        if not root:
            raise ConfigError("source.root: a parquet source needs a .parquet file or a folder of them")
        kw = {"root": root, "image_column": cfg.image_column, "path_column": cfg.path_column,
              "text_column": cfg.text_column, "label_column": cfg.label_column, "id_column": cfg.id_column,
              "max_image_pixels": cfg.max_image_pixels, "storage_options": source_options(cfg)}
    elif cfg.kind == "webdataset":
        if not (root or cfg.shards):
            raise ConfigError("source.root: a webdataset source needs its shards (a brace pattern, or source.shards)")
        kw = {"root": [resolve_path(s) for s in cfg.shards] if cfg.shards else root, "max_image_pixels":
              cfg.max_image_pixels, "extensions": list(cfg.extensions), "label_field": cfg.label_field,
              "modality": cfg.modality, "storage_options": source_options(cfg), "index": index}
    else:
        if not root:
            raise ConfigError(f"source.root: a {cfg.kind} source needs its folder")
        kw = {"root": root, **({"max_image_pixels": cfg.max_image_pixels} if cfg.kind == "image_folder" else {})}
    source = KINDS[cfg.kind](**kw)
    return head(source, cfg.limit) if cfg.limit else source
