"""Reading a weights file as tensors only (``torch.load(weights_only=True)``): a checkpoint,
a teacher's or a student's weights written by someone else never runs code here."""

from __future__ import annotations

import pickle
import re
import warnings
from typing import Any

import torch

from .errors import DataError


def read_tensors(path: str, error: type[DataError] = DataError, what: str = "weights file") -> dict[str, Any]:
    """The dict of tensors (and plain numbers) in ``path``; ``error`` with one line when the file
    holds pickled objects, is not a torch file, or holds something other than a dict."""
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's weights-only unpickler met something that is not a tensor
        raise error(f"{path}: refused: not a {what} of tensors only ({_reason(exc)}); it may hold pickled "
                    "objects, and loading them could run code") from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise error(f"{path}: not a readable {what} ({_reason(exc)})") from exc
    if not isinstance(state, dict):
        raise error(f"{path}: not a {what} (holds a {type(state).__name__}, not a dict of tensors)")
    return state


def _reason(exc: BaseException) -> str:
    """The part of torch's long message that says what is wrong with the file."""
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
    return found.group(1).strip() if found else (str(exc).split(". ")[0] or type(exc).__name__)


def misfit(own: dict[str, Any], state: dict[str, Any]) -> str:
    """Why the tensors ``state`` cannot replace ``own`` ("" when they can): missing and unexpected
    names, and names of another shape with both shapes. Checked before torch's own load, whose
    RuntimeError would read as an internal bug when the file, not the code, is what is wrong."""
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state)
                    if hasattr(state[k], "shape") and tuple(own[k].shape) != tuple(state[k].shape))
    parts = [f"{len(missing)} missing ({', '.join(missing[:3])})" if missing else "",
             f"{len(extra)} unexpected ({', '.join(extra[:3])})" if extra else "",
             f"{len(shapes)} of another shape (" + ", ".join(
                 f"{k} {list(state[k].shape)} in the file, {list(own[k].shape)} here" for k in shapes[:2]) + ")"
             if shapes else ""]
    return "; ".join(p for p in parts if p)

