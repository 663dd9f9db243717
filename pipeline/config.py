"""The schema of an extraction run (TOML in configs/, ``--set`` overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from featcache.plumbing.storage import storage_field


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


@dataclass(frozen=True)
class TeacherConfig:
    name: str = "effnet_lite0"  # name of the feature array in the store
    kind: Literal["open_clip", "hf", "timm"] = "timm"
    model: str = "tf_efficientnet_lite0"  # architecture, hub id, or local directory
    pretrained: str = ""  # open_clip tag or checkpoint file; timm checkpoint file ("" = random init)
    model_config: str = ""  # open_clip: a custom model config JSON to register first
    key_map: str = ""  # timm: rename checkpoint keys from another naming ("efficientnet_pytorch")
    output: str = "default"  # open_clip: embed|pooled; hf: cls|mean|pooler|last_token; timm: pooled
    normalize: bool = False  # L2-normalise each feature vector
    layer: int = -1  # hf: hidden layer index (-1 = last)
    image_size: int = 0  # 0 = the model's own
    mean: tuple[float, ...] = ()  # () = the model's own
    std: tuple[float, ...] = ()
    interpolation: str = ""  # "" = the model's own (bilinear, bicubic)
    crop_pct: float = 0.0  # 0 = the model's own
    max_length: int = 256  # text teachers: tokens per input
    # The weights check (pipeline/teachers/check.py): the first feature values that the weights' own
    # library computes on a fixed input (a fixed sentence, or 1.5*sin(0.37k) as the image tensor);
    # on load the teacher recomputes them and stops with TeacherWeightsError when they differ by more
    # than check_tolerance x their largest magnitude. () = no check. Not in the fingerprint.
    check_output: tuple[float, ...] = ()
    check_tolerance: float = 1e-3

    def validate(self) -> list[str]:
        errors = []
        if not self.name or self.name.startswith("_"):
            errors.append("name: must be non-empty and not start with '_'")
        if (len(self.mean) not in (0, 3)) or (len(self.std) not in (0, 3)):
            errors.append("mean/std: give three values each, or none")
        if not self.check_tolerance > 0:
            errors.append("check_tolerance: must be > 0")
        return errors


@dataclass(frozen=True)
class OutputConfig:
    store: str = "stores/fashion_mnist/train.zarr"  # local path or fsspec URL (Zarr), or a .h5 file
    backend: Literal["zarr", "hdf5", "auto"] = "auto"  # auto: .h5/.hdf5 means HDF5, otherwise Zarr
    partition_rows: int = 4096  # rows per partition (power of two); a crash loses at most one per process
    dtype: Literal["float16", "float32"] = "float16"
    compressor: Literal["none", "lz4"] = "none"
    overwrite: bool = False  # replace an existing store instead of resuming it
    # [output.storage]: fsspec options of an s3:// gs:// az:// store (endpoint_url, profile, anon, key,
    # secret, ...); never saved anywhere. --storage-option KEY=VALUE overrides them.
    storage: dict[str, Any] = storage_field()


@dataclass(frozen=True)
class ExtractConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    teachers: tuple[TeacherConfig, ...] = (TeacherConfig(),)
    output: OutputConfig = field(default_factory=OutputConfig)
    views: int = 1  # 1 = eval view only; K > 1 adds K-1 recorded random crops + flips
    view_scale_min: float = 0.35  # smallest crop area fraction of the random views
    seed: int = 0  # view sampling (per row, so resume and torchrun give the same store)
    batch_size: int = 64
    decode_threads: int = 2
    max_invalid_fraction: float = 0.05  # stop when more inputs than this fail to decode
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    def validate(self) -> list[str]:
        errors = []
        if not self.teachers:
            errors.append("teachers: name at least one teacher")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            errors.append(f"teachers: names must be unique (got {names})")
        if self.views < 1:
            errors.append("views: must be >= 1")
        if not 0 < self.view_scale_min <= 1:
            errors.append("view_scale_min: must be in (0, 1]")
        if self.batch_size < 1:
            errors.append("batch_size: must be >= 1")
        if not 0 <= self.max_invalid_fraction <= 1:
            errors.append("max_invalid_fraction: must be in [0, 1]")
        return errors
