"""Recorded augmentation views: sample parameters in stage 1, replay them in stage 2.

Encoding of one view (``VIEW_PARAMS``), all relative to the raw input's size so
they replay on any copy of it:

    x0, y0, x1, y1   crop box as fractions of width/height (0 <= x0 < x1 <= 1)
    flip             1.0 when the crop is mirrored left-right, else 0.0

View 0 is the deterministic eval view and is always the full input, unflipped:
``[0, 0, 1, 1, 0]``. The crop is applied to the raw image, then each model's own
resize/normalisation runs on the result.
"""

from __future__ import annotations

import math

import numpy as np

from featcache.plumbing.errors import UsageError

VIEW_PARAMS = ("x0", "y0", "x1", "y1", "flip")
EVAL_VIEW = np.array([0.0, 0.0, 1.0, 1.0, 0.0], np.float32)


def sample_view(rng: np.random.Generator, width: int, height: int, scale: tuple[float, float] = (0.35, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> np.ndarray:
    """A random-resized-crop box plus flip, as torchvision samples them (10 tries, then centre)."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x = int(rng.integers(0, width - w + 1))
            y = int(rng.integers(0, height - h + 1))
            break
    else:
        w, h, x, y = width, height, 0, 0
    flip = float(rng.random() < flip_p)
    return np.array([x / width, y / height, (x + w) / width, (y + h) / height, flip], np.float32)


def apply_view(image, params: np.ndarray):
    """Crop and flip a PIL image exactly as ``params`` say (pixel box rounded the same way every time)."""
    from PIL import Image

    x0, y0, x1, y1, flip = (float(v) for v in params[:5])
    w, h = image.size
    box = (int(round(x0 * w)), int(round(y0 * h)), int(round(x1 * w)), int(round(y1 * h)))
    if box != (0, 0, w, h):
        image = image.crop(box)
    if flip >= 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


# Resize filters a student input may be rendered with (Pillow's names, lower case).
RESIZE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def render_view(image, params: np.ndarray | None, size: int, resize_filter: str = "bilinear") -> np.ndarray:
    """A student's input: the view cropped/flipped by ``apply_view``, resized to size x size, uint8 HWC.

    The one function both the decoding path of stage 2 and the cached student inputs
    use, so a cached input is bitwise what decoding would give.
    """
    from PIL import Image

    if resize_filter not in RESIZE_FILTERS:
        raise UsageError(f"resize filter must be one of {', '.join(RESIZE_FILTERS)}, got {resize_filter!r}")
    if params is not None:
        image = apply_view(image, params)
    resample = getattr(Image.Resampling, resize_filter.upper())
    return np.asarray(image.resize((size, size), resample), dtype=np.uint8)
