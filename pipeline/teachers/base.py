"""What every teacher adapter provides, and the helpers they share.

A teacher turns a batch of raw inputs (RGB PIL images or strings) into a (B, D)
float tensor. ``spec()`` is every value that changes those features; the store
hashes it into the teacher fingerprint. Batch size and device are left out on
purpose: they do not change the features beyond float rounding.
"""

from __future__ import annotations

import contextlib
import hashlib
from importlib import metadata
from typing import Any, Protocol

import torch
from torch import nn

from featcache.plumbing.errors import DataError, UsageError


class Teacher(Protocol):
    name: str
    modality: str  # "image" or "text"
    dim: int

    def spec(self) -> dict[str, Any]: ...

    def prepare(self, items: list[Any]) -> Any:
        """Raw inputs -> model inputs on the CPU (this teacher's own preprocessing)."""

    def encode(self, batch: Any) -> torch.Tensor:
        """Model inputs -> (B, D) float32 features on the CPU, no grad: what the store caches."""

    def features(self, batch: Any) -> torch.Tensor:
        """The same features with autograd on the model's device, to fine-tune the teacher."""


class TeacherError(UsageError):
    """A teacher that cannot be built as configured (unknown model, missing checkpoint, bad option)."""


class TeacherWeightsError(DataError):
    """A teacher checkpoint that does not load: not tensors only, damaged, or another model's weights."""


def library_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def state_dict_sha256(model: nn.Module) -> str:
    """Hash of the weights actually loaded, whatever file or hub they came from."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def best_device(choice: str = "auto") -> torch.device:
    if choice != "auto":
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def inference(device: torch.device):
    """No grad, and autocast on GPUs (bf16 where supported); plain float32 on the CPU."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        stack.enter_context(torch.autocast("cuda", dtype=dtype))
    return stack


def finish(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    features = features.float()
    if normalize:
        features = torch.nn.functional.normalize(features, dim=-1)
    return features.cpu()


def describe_transform(transform: Any) -> str:
    """A plain, stable text of a torchvision transform pipeline (its repr lists every step)."""
    return " ".join(repr(transform).split())
