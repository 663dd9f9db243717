"""Decoding one row's bytes: images through PIL under a pixel limit, text checked non-empty.

Every failure of a decoder is that row's problem (an ``InputError`` naming the file and the
decoder's message), never a reason to stop a run.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from typing import Any

from .source import InputError


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


def decode_image(data: bytes, what: str, max_image_pixels: int = 0):
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


def read_image_file(path: str, max_image_pixels: int = 0):
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or clean_reason(exc)})") from exc
    return decode_image(data, path, max_image_pixels)


def check_text(text: Any, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what}: empty text")
    return text


def image_params(max_image_pixels: int) -> dict[str, Any]:
    """Recorded only when set, so stores made before the option keep resuming."""
    return {"max_image_pixels": int(max_image_pixels)} if max_image_pixels else {}
