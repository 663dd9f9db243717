"""Stage-2 methods: one class per method, registered by name (see ``registry``).

Every module of this package is imported here, in name order, and registers the methods it
defines, so adding a method is adding one module (or one class to the module of its family).
A method defined elsewhere (a test, a plugin) registers itself with ``@register``.
"""

from __future__ import annotations

import importlib
import pkgutil

from . import registry
from .registry import BuildContext, Method, from_config, get, lookup, names, register, unregister

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
    if _info.name != "registry" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["BuildContext", "Method", "from_config", "get", "lookup", "names", "register", "registry", "unregister"]
