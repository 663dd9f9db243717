"""Checkpoints are plain dicts with constant keys, written atomically (temp file + rename)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch

KEYS = ("learner", "optimizer", "scheduler", "epoch", "history", "config")


def save_atomic(obj: Any, path: str) -> None:
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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


def load(path: str) -> dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a featcache-train checkpoint (missing {', '.join(missing)})")
    return ckpt


def warn(message: str) -> None:
    print(f"featcache-train: warning: {message}", file=sys.stderr)
