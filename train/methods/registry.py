"""The method registry: a stage-2 method is one class, found here by its name.

A method class is a frozen dataclass whose fields are its parameters (the ``[method]``
keys it reads, each with a default), plus class attributes for its name and its needs,
and ``build`` for its loss module. ``@register`` adds it; from then on the config schema,
the sweep's run hash, compare's labels and the loop all know it.

The ``[method]`` table stays flat, as TOML writes it: ``name`` picks the method, and every
registered method's parameters are keys of it (one config or one sweep serves every method;
a method reads only its own). ``MethodConfig`` is that table's schema and ``MethodName``
the Literal of the names; both are rebuilt on each registration, so read them as
``registry.MethodConfig`` (an annotation ``registry.MethodConfig`` is evaluated at each load),
never copy them out with ``from ... import``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn

from featcache.plumbing.config import ConfigError

from ..losses import MethodLoss

DEFAULT = "aft"  # [method] name when a config gives none: the product's method


@dataclass(frozen=True)
class BuildContext:
    """What the loop hands a method to build its loss."""

    d_h: int  # width of the student's penultimate features
    d_phi: int | None  # width of the cached teacher features (the bank's dim); None without needs_features
    num_classes: int
    probe: nn.Linear | None = None  # the teacher's task head on the cached features; only with needs_probe
    total_steps: int = 0  # optimiser steps of the whole run (0 = unknown)


@dataclass(frozen=True)
class Method:
    """One stage-2 method. Subclass as ``@register @dataclass(frozen=True)``: fields are the parameters."""

    name: ClassVar[str] = ""
    needs_features: ClassVar[bool] = False  # cached teacher features (phi) in every batch
    needs_probe: ClassVar[bool] = False  # a linear probe fitted on the labeled rows' features (BuildContext.probe)
    unlabeled: ClassVar[bool] = False  # trains on every valid row of the store, labels never read

    @classmethod
    def params(cls) -> tuple[str, ...]:
        """The [method] keys this method reads: they, and only they, change what its runs compute."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def validate(self) -> list[str]:
        """One message per bad parameter, ``key: what is wrong`` (the loader prefixes ``method.``)."""
        return []

    def build(self, ctx: BuildContext) -> MethodLoss:
        raise NotImplementedError(f"method {self.name!r}: build() missing")


_METHODS: dict[str, type[Method]] = {}
MethodName: Any = str  # Literal of the registered names (rebuilt by register)


def names() -> tuple[str, ...]:
    return tuple(_METHODS)


def lookup(name: str) -> type[Method] | None:
    """The method registered as ``name``, None for any other name (a TOKT variant, an old run's)."""
    return _METHODS.get(name)


def get(name: str) -> type[Method]:
    cls = _METHODS.get(name)
    if cls is None:
        raise ConfigError(f"method.name: {name!r} is not a registered method (known: {', '.join(_METHODS)})")
    return cls


def from_config(cfg: Any) -> Method:
    """The method a [method] table picks, holding its own parameters' values."""
    return _instance(get(cfg.name), cfg)


def _instance(cls: type[Method], cfg: Any) -> Method:
    return cls(**{f.name: getattr(cfg, f.name, f.default) for f in dataclasses.fields(cls)})


def _param_types(cls: type[Method]) -> dict[str, tuple[Any, Any]]:
    """name -> (type, default) of each parameter, the annotations resolved."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING:
            raise TypeError(f"method {cls.name!r}: parameter {f.name!r} needs a default (every option has one)")
        out[f.name] = (hints[f.name], f.default)
    return out


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method. A parameter two methods share must agree on type and default."""
    if not (isinstance(cls, type) and issubclass(cls, Method) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
            and "__dataclass_fields__" in vars(cls)):
        raise TypeError(f"{cls!r}: a method is a frozen dataclass subclass of Method")
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r}: " + ("empty" if not cls.name else "already registered"))
    if cls.needs_probe and not cls.needs_features:
        raise TypeError(f"method {cls.name!r}: needs_probe is a probe on the teacher features (needs_features)")
    mine = _param_types(cls)
    if "name" in mine:
        raise ValueError(f"method {cls.name!r}: 'name' is taken by [method] name")
    known = _union()
    for key, (tp, default) in mine.items():
        if key in known and known[key] != (tp, default):
            raise TypeError(f"method {cls.name!r}: parameter {key!r} is {tp} = {default!r} here but "
                            f"{known[key][0]} = {known[key][1]!r} in another method")
    _METHODS[cls.name] = cls
    _rebuild()
    return cls


def unregister(name: str) -> None:
    """Remove a method (tests register toy methods and take them out again)."""
    _METHODS.pop(name, None)
    _rebuild()


def _union() -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for cls in _METHODS.values():
        for key, spec in _param_types(cls).items():
            out.setdefault(key, spec)
    return out


def _validate(cfg: Any) -> list[str]:
    """Every registered method checks its own parameters (a bad value is caught whichever method runs)."""
    errors: list[str] = []
    for cls in _METHODS.values():
        errors += [m for m in _instance(cls, cfg).validate() if m not in errors]
    return errors


def _rebuild() -> None:
    global MethodConfig, MethodName
    MethodName = Literal[names()] if _METHODS else str  # Literal[("a", "b")] is Literal["a", "b"]
    fields: list[tuple[str, Any, Any]] = [("name", MethodName, dataclasses.field(default=DEFAULT))]
    fields += [(key, tp, dataclasses.field(default=default)) for key, (tp, default) in _union().items()]
    MethodConfig = dataclasses.make_dataclass(
        "MethodConfig", fields, frozen=True, namespace={"validate": _validate, "__module__": __name__,
                                                        "__doc__": "[method]: name, then every registered "
                                                                   "method's parameters (flat)."})


MethodConfig: type
_rebuild()
