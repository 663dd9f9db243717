"""The schema of an extraction run (TOML in configs/, ``--set`` overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from featcache.plumbing.storage import storage_field
from featcache.rawdata.configured import SourceConfig  # the [source] table lives below both stages


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


def backend_of(cfg: ExtractConfig) -> str | None:
    """The store backend ``output.backend`` asks for; None: chosen from the store's path."""
    return None if cfg.output.backend == "auto" else cfg.output.backend
