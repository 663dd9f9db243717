"""The weights check: a teacher's first feature values on one fixed input, against recorded ones.

A strict load proves only that names and shapes fit. Weights made for another computation (a
TensorFlow port in a network with PyTorch padding and BatchNorm eps) load all the same and give
other features. ``check_output`` in a teacher's config holds the first values of the features
that the weights' own library computes on a fixed input; featcache recomputes them on load and
refuses the teacher when they differ.

The fixed input (reproducible with any library, no featcache code needed):
- text towers: the one string ``CHECK_TEXT``, through the teacher's own tokenizer;
- image towers: the model input itself, after preprocessing, of the shape the teacher's own
  preprocessing gives (1, 3, H, W), filled with ``1.5 * sin(0.37 * k)`` for k = 0, 1, ... over
  its flat (C-order) index, computed in float64 and rounded to float32 (``check_pixels``).
  Preprocessing is not part of it: it has its own record in the teacher's fingerprint.
The features are the stored ones (pooling and ``normalize`` applied), in float32 with no autocast
and no TF32, so a GPU run compares like a CPU one.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch

from ..config import TeacherConfig
from .base import Teacher, TeacherError, TeacherWeightsError, finish

CHECK_TEXT = "featcache checks that these weights compute the network they were made for."


def check_pixels(shape: tuple[int, ...]) -> torch.Tensor:
    """The image check input: 1.5 * sin(0.37 * k) over the flat index k, float64 rounded to float32."""
    k = torch.arange(math.prod(shape), dtype=torch.float64)
    return (1.5 * torch.sin(0.37 * k)).to(torch.float32).reshape(shape)


def check_batch(teacher: Teacher) -> Any:
    """The teacher's model input for the check: its tokenizer's for CHECK_TEXT, or check_pixels
    in the shape (and container) its preprocessing gives an image."""
    if teacher.modality == "text":
        return teacher.prepare([CHECK_TEXT])
    from PIL import Image
    batch = teacher.prepare([Image.new("RGB", (64, 64))])  # only its shape is kept
    if isinstance(batch, dict):  # transformers image processors: {"pixel_values": ...}
        return {**batch, "pixel_values": check_pixels(tuple(batch["pixel_values"].shape))}
    return check_pixels(tuple(batch.shape))


@contextlib.contextmanager
def _plain_float32(device: torch.device) -> Iterator[None]:
    """No grad, no autocast, and no TF32 on CUDA (on by default for cuDNN convolutions)."""
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
    try:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with torch.inference_mode():
            yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def output_on_check(teacher: Teacher, normalize: bool, count: int, device: torch.device) -> list[float]:
    """The teacher's first ``count`` feature values on the check input (float32, as stored)."""
    with _plain_float32(device):
        return finish(teacher.features(check_batch(teacher)), normalize)[0, :count].tolist()


def verify_output(teacher: Teacher, cfg: TeacherConfig, device: torch.device) -> None:
    """Raise TeacherWeightsError when the features of the check input are not ``cfg.check_output``:
    values agree when max |got - want| <= check_tolerance * max |want| (relative to their scale,
    so one tolerance fits raw and L2-normalised features)."""
    want = [float(v) for v in cfg.check_output]
    if len(want) > teacher.dim:
        raise TeacherError(f"teacher {cfg.name}: check_output has {len(want)} values, its features {teacher.dim}")
    got = output_on_check(teacher, cfg.normalize, len(want), device)
    diff = max(abs(g - w) for g, w in zip(got, want))
    bound = cfg.check_tolerance * (max(abs(w) for w in want) or 1.0)
    if not diff <= bound:  # NaN fails too
        shown = ", ".join(f"{g:.6g}" for g in got)
        hint = " (TF-ported EfficientNet weights need tf_efficientnet_lite*)" if cfg.kind == "timm" else ""
        raise TeacherWeightsError(
            f"teacher {cfg.name}: features of the check input differ from check_output by up to {diff:.3g} "
            f"(allowed {bound:.3g}): {cfg.kind} model {cfg.model!r} with these weights is not the network "
            f"check_output was recorded from{hint}; got [{shown}]")
