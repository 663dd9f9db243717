"""Paths that point inside installed packages (models and data shipped on PyPI)."""

from __future__ import annotations

import os


def resolve_path(ref: str) -> str:
    """``pkg:package/relative/path`` -> that file or folder inside the installed package; others unchanged."""
    if not ref.startswith("pkg:"):
        return ref
    package, _, rel = ref[4:].partition("/")
    from importlib import resources
    try:
        base = resources.files(package)
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(f"{ref}: package {package!r} is not installed") from exc
    path = os.path.join(str(base), rel)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{ref}: {path} does not exist")
    return path
