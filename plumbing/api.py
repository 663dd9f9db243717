"""What the Python API of both stages shares: keyword overrides and progress bars.

A notebook writes ``source={"limit": 500}`` where the command line writes
``--set source.limit=500``. Each keyword becomes exactly the ``--set`` line it
stands for and goes through the same ``load_config``, so the API and the CLI
validate alike: a wrong key is the same one-line ``ConfigError`` naming it.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from .config import ConfigError


def toml_value(value: Any, key: str) -> str:
    """``value`` as the TOML text ``parse_override`` reads back to the same value."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalars and arrays
        value = value.tolist()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else str(value)  # inf, -inf, nan are TOML too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # its escapes are TOML's basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v, f"{key}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v, f'{key}.{k}')}"
                               for k, v in value.items()) + "}"
    if value is None:
        raise ConfigError(f"{key}: None is not a config value (leave the key out to keep its default)")
    raise ConfigError(f"{key}: expected a number, string, bool, list or table, got {value!r}")


def as_overrides(sections: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``{"source": {"limit": 500}, "views": 4}`` -> ``["source.limit=500", "views=4"]``.

    Tables are walked down to their leaves, so a keyword updates the keys it names and leaves
    the config file's other keys of that section alone, as ``--set`` does.
    """
    out: list[str] = []
    for key, value in sections.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):  # an empty table changes nothing
            out += as_overrides(value, dotted + ".")
        else:
            out.append(f"{dotted}={toml_value(value, dotted)}")
    return out


def check_engine(engine: str, ray_options: Mapping[str, Any]) -> None:
    """``engine`` is "local" or "ray"; Ray's options (None: not given) only with "ray"."""
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine: expected 'local' or 'ray', got {engine!r}")
    given = [k for k, v in ray_options.items() if v is not None]
    if engine == "local" and given:
        raise ConfigError(f"{', '.join(given)}: only with engine='ray'")


class _Terminal:
    """A stream that answers ``isatty()`` as told and passes everything else through."""

    def __init__(self, stream: Any, tty: bool) -> None:
        self._stream, self._tty = stream, tty

    def isatty(self) -> bool:
        return self._tty

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def progress_bars(show: bool | None) -> Iterator[None]:
    """The commands' tqdm bars show on a terminal only (``disable=None``). Jupyter's stderr is no
    terminal, so ``show=True`` lets them draw there; ``False`` hides them; ``None`` leaves it be."""
    if show is None:
        yield
        return
    real = sys.stderr
    sys.stderr = _Terminal(real, show)
    try:
        yield
    finally:
        sys.stderr = real
