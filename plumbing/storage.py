"""Options for stores behind fsspec URLs (s3://, gs://, az://): endpoint, profile, credentials.

They come from a config table (``[output.storage]``, ``[data.storage]``) and from
``--storage-option key=value`` flags (which win), and reach every remote store a
command opens without being threaded through each call. They hold secrets, so
they live in this process only: never in a store's attributes, a resolved config
(``to_dict`` leaves the tables out), results, or a log line.
"""

from __future__ import annotations

import argparse
from dataclasses import field
from typing import Any, Mapping, Sequence

import fsspec

from .config import ConfigError, merge_overrides

LOCAL_PROTOCOLS = ("file", "local")
_layers: dict[str, dict[str, Any]] = {"config": {}, "flags": {}}


def protocol(path: str) -> str:
    return str(path).split("://", 1)[0] if "://" in str(path) else "file"


def is_remote(path: str) -> bool:
    return protocol(path) not in LOCAL_PROTOCOLS


def parse_options(texts: Sequence[str]) -> dict[str, Any]:
    """``["endpoint_url=http://h:9000", "anon=true", "client_kwargs.region_name=eu"]`` -> a (nested)
    dict, values read as TOML like ``--set``."""
    for text in texts:
        if "=" not in text or not text.split("=", 1)[0].strip():
            raise ConfigError(f"--storage-option {text.split('=', 1)[0]!r}: expected key=value")
    return merge_overrides({}, texts)


def storage_field() -> Any:
    """A config table of storage options: kept out of every saved config (see ``to_dict``)."""
    return field(default_factory=dict, metadata={"secret": True})


def set_options(options: Mapping[str, Any] | None, *, layer: str = "config") -> None:
    """Add options for every remote store this process opens; flags override config tables."""
    _layers[layer].update(dict(options or {}))


def snapshot() -> dict[str, dict[str, Any]]:
    """Both layers, to hand to a spawned worker (its ``install`` argument)."""
    return {k: dict(v) for k, v in _layers.items()}


def install(layers: Mapping[str, Mapping[str, Any]]) -> None:
    for name, options in layers.items():
        _layers[name] = dict(options)


def reset() -> None:
    for options in _layers.values():
        options.clear()


def options_for(path: str, explicit: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """fsspec options for ``path``: None for local paths, else config < flags < ``explicit``."""
    if not is_remote(path):
        return None
    return {**_layers["config"], **_layers["flags"], **dict(explicit or {})}


def filesystem(path: str, explicit: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it; listings are re-read, since other writers change them."""
    fs, root = fsspec.core.url_to_fs(str(path), **(options_for(path, explicit) or {}))
    fs.invalidate_cache()
    return fs, root.rstrip("/")


def exists(path: str, explicit: Mapping[str, Any] | None = None) -> bool:
    """Anything at ``path``: a file, a directory, or (object stores) any key under the prefix."""
    fs, root = filesystem(path, explicit)
    return bool(fs.exists(root))


def add_flag(parser: argparse.ArgumentParser, default: object = None) -> None:
    """``--storage-option``; sub-commands pass SUPPRESS so they do not reset the main parser's."""
    parser.add_argument("--storage-option", dest="storage_options", action="append",
                        default=[] if default is None else default,
                        metavar="KEY=VALUE",
                        help="fsspec option for s3:// gs:// az:// stores, e.g. endpoint_url=http://host:9000, "
                             "profile=team, anon=true (repeatable; never written to any file)")


def use_flags(args: argparse.Namespace) -> None:
    """Register a parsed command line's ``--storage-option`` flags."""
    set_options(parse_options(getattr(args, "storage_options", None) or []), layer="flags")


def access_errors() -> tuple[type[BaseException], ...]:
    """Client errors that mean a wrong credential, profile or endpoint (botocore raises them
    outside OSError): the user's to fix, so commands print them as one line."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return ()
    return (BotoCoreError,)
