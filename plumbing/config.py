"""TOML configs onto frozen dataclasses, with ``--set key=value`` overrides.

Every bad key or value is reported, all at once, as one line each naming the
dotted key, so a user fixes a config in one pass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import UsageError

T = TypeVar("T")


class ConfigError(UsageError):
    """A config that does not match its schema; the message lists every problem."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, errors)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            errors.append(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{key}: expected a list, got {value!r}")
            return value
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            errors.append(f"{key}: expected a table, got {value!r}")
        return dict(value) if isinstance(value, Mapping) else value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            errors.append(f"{key}: expected a table, got {value!r}")
            return tp()
        return _build(tp, value, f"{key}.", errors)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    errors.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, errors: list[str]) -> T:
    hints = typing.get_type_hints(cls)
    before = len(errors)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            errors.append(f"{prefix}{key}: unknown key (known: {', '.join(sorted(fields))})")
    values = {name: _coerce(data[name], hints[name], f"{prefix}{name}", errors)
              for name in fields if name in data}
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None and len(errors) == before:  # range checks need well-typed values
        errors.extend(f"{prefix}{msg}" for msg in check())
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value), the value read as TOML (bare words are strings)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def merge_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    out = {**data}
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        node[path[-1]] = value
    return out


def load_config(cls: type[T], path: str | None = None, overrides: Sequence[str] = (),
                data: Mapping[str, Any] | None = None) -> T:
    """Read ``path`` (TOML) and/or ``data``, apply overrides, and validate against ``cls``."""
    raw: dict[str, Any] = dict(data or {})
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = {**raw, **tomllib.load(fh)}
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{path}: config file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    raw = merge_overrides(raw, overrides)
    errors: list[str] = []
    cfg = _build(cls, raw, "", errors)
    if errors:
        where = f"{path}: " if path else ""
        raise ConfigError(where + "; ".join(errors))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain values, saved next to every output.

    Fields marked ``metadata={"secret": True}`` (storage options: credentials) are left out.
    """
    return json_plain(_public(cfg))


def _public(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _public(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.metadata.get("secret")}
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    return value


def json_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_plain(v) for v in value]
    return value
