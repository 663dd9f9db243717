"""Checkpoints: the tensors in ``checkpoint.pt``, the run's config and history as JSON beside it
(``checkpoint.json``).

The tensors load with ``weights_only=True``: a run directory shared between people cannot run
code on ``--resume``; a file holding pickled objects is refused with one line.

Write order, so a half-written pair is never taken as complete: the JSON first, then the tensors,
each atomically (``plumbing/atomic.py``). The tensors file is the commit point and names its epoch;
the JSON beside it always covers at least that epoch (history only grows), so a kill between the
two writes leaves the previous tensors next to a JSON one epoch ahead, cut back to the tensors'
epoch on load. A JSON behind its tensors (or missing) cannot come from this order: refused.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from featcache.plumbing import atomic
from featcache.plumbing.errors import DataError
from featcache.plumbing.weights import misfit, read_tensors

FORMAT = 2
KEYS = ("learner", "optimizer", "scheduler", "epoch", "history", "config")
TENSOR_KEYS = ("learner", "optimizer", "scheduler", "epoch")


class CheckpointError(DataError):
    """A checkpoint that cannot be resumed: unreadable, incomplete, or holding pickled code."""


def json_path(path: str) -> str:
    """``out/checkpoint.pt`` -> ``out/checkpoint.json``."""
    return os.path.splitext(path)[0] + ".json"


def save(path: str, *, learner: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any], epoch: int,
         history: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """The JSON (config, history) first, then the tensors: see the module docstring for why."""
    atomic.write_json(json_path(path), {"format": FORMAT, "epoch": epoch, "history": history, "config": config})
    tensors = {"format": FORMAT, "learner": learner, "optimizer": optimizer, "scheduler": scheduler, "epoch": epoch}
    atomic.write_with(path, lambda fh: torch.save(tensors, fh))


def _load_tensors(path: str) -> dict[str, Any]:
    return read_tensors(path, CheckpointError, "featcache-train checkpoint")


def _read_json(path: str) -> dict[str, Any]:
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing: the checkpoint's config and history are not beside its tensors"
                              ) from exc
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not {"epoch", "history", "config"} <= set(doc):
        raise CheckpointError(f"{path}: not a featcache-train checkpoint document")
    return doc


def load(path: str) -> dict[str, Any]:
    """The checkpoint as one dict with ``KEYS``: tensors from ``path``, config and history from the JSON."""
    state = _load_tensors(path)
    if "config" in state and "history" in state:  # format 1: everything in one file (still tensors-only)
        doc = {"epoch": state.get("epoch"), "history": state["history"], "config": state["config"]}
    else:
        doc = _read_json(json_path(path))
    missing = [k for k in TENSOR_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a featcache-train checkpoint (missing {', '.join(missing)})")
    epoch = int(state["epoch"])
    if int(doc["epoch"]) < epoch or len(doc["history"]) < epoch:
        raise CheckpointError(f"{json_path(path)}: covers epoch {doc['epoch']}, the tensors epoch {epoch}: "
                              "an incomplete checkpoint; start the run again without --resume")
    return {**{k: state[k] for k in TENSOR_KEYS}, "epoch": epoch, "history": list(doc["history"][:epoch]),
            "config": doc["config"]}


def load_into(module: torch.nn.Module, state: Any, path: str, what: str, hint: str = "") -> None:
    """``module.load_state_dict(state)``; tensors written for another model (a checkpoint.pt or
    probe.pt from a run of another student or teacher, a foreign file) are a CheckpointError with
    one line naming ``path`` and what does not fit."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the {what} holds a {type(state).__name__}, not a dict of tensors")
    why = misfit(module.state_dict(), state)
    if why:
        raise CheckpointError(f"{path}: the {what} does not fit this model: {why}" + (f"; {hint}" if hint else ""))
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:  # e.g. a plain number under a parameter's name
        raise CheckpointError(f"{path}: the {what} does not load ({str(exc).splitlines()[0]})") from exc


RESUME_HINT = ("written by another run or another featcache version? start the run again without --resume, "
               "or use another out_dir")


def restore(state: dict[str, Any], path: str, learner: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any) -> None:
    """Put a loaded checkpoint's tensors back into this run's objects. Tensors of another shape
    (a checkpoint.pt copied from a run of another student, a foreign file) are a data problem:
    one CheckpointError line naming the file and what does not fit, never torch's traceback."""
    load_into(learner, state["learner"], path, "checkpoint's learner state", RESUME_HINT)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        try:
            obj.load_state_dict(state[name])
        except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{path}: the checkpoint's {name} state does not fit this run ({reason}); "
                                  f"{RESUME_HINT}") from exc


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_drift(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    a, b = _flatten(saved), _flatten(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def warn(message: str) -> None:
    print(f"featcache-train: warning: {message}", file=sys.stderr)

