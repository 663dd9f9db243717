"""Stage 1 from Python: what ``featcache-extract`` does, with keyword overrides.

    from featcache.pipeline import extract_features
    summary = extract_features("configs/demo_vision.toml", source={"limit": 500})

The config is built by the CLI's own path (``load_config`` with ``--set`` lines,
``select_teachers``), so a wrong key fails the same way, and the engine is the
CLI's ``run_extract``. Nothing heavy is imported until a call runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from featcache.plumbing.api import as_overrides, check_engine, progress_bars
from featcache.plumbing.config import load_config

from .config import ExtractConfig

if TYPE_CHECKING:
    from .outcome import Summary


def extract_config(config: str | None = None, *, only_teachers: str | Sequence[str] | None = None,
                   index_only: bool = False, **overrides: Any) -> ExtractConfig:
    """The resolved config a call of ``extract_features`` with these arguments would run."""
    from .cli import select_teachers

    names = only_teachers if only_teachers is None or isinstance(only_teachers, str) else ",".join(only_teachers)
    cfg = load_config(ExtractConfig, config, as_overrides(overrides))
    return select_teachers(cfg, names, index_only)


def extract_features(config: str | None = None, *, add_teacher: bool = False,
                     only_teachers: str | Sequence[str] | None = None, index_only: bool = False,
                     progress: bool | None = None, log: Callable[[str], None] = print,
                     engine: str = "local", address: str | None = None, ray_workers: int | None = None,
                     ray_cpus: int | None = None,
                     **overrides: Any) -> "Summary | None":
    """Run the teachers of ``config`` (a TOML path; None = the defaults) over its source into its store.

    ``overrides`` are config sections as keyword tables (``source={"limit": 500}``,
    ``output={"store": "stores/x.zarr"}``, ``teachers=[{...}]``) or top-level keys (``views=4``).
    ``add_teacher``, ``only_teachers`` and ``index_only`` are the flags ``--add-teacher``,
    ``--teachers A,B`` and ``--index-only``. ``progress``: True draws the bar where stderr is no
    terminal (Jupyter), False hides it, None shows it on a terminal only, like the command.
    ``engine="ray"`` is ``--engine ray``: a pool of Ray actors (``address``, ``ray_workers``,
    ``ray_cpus`` are its flags; None: the flag's default); where ``ray.init`` already ran in this
    session, that instance is used.
    Returns the run's ``Summary`` (None on the other ranks under torchrun).
    """
    check_engine(engine, {"address": address, "ray_workers": ray_workers, "ray_cpus": ray_cpus})
    cfg = extract_config(config, only_teachers=only_teachers, index_only=index_only, **overrides)
    with progress_bars(progress):
        if engine == "ray":
            from .ray_engine import run_extract_ray

            return run_extract_ray(cfg, add_teacher=add_teacher, address=address, workers=ray_workers or 0,
                                   cpus=ray_cpus or 0, log=log)
        from .extract import run_extract

        return run_extract(cfg, add_teacher=add_teacher, log=log)


__all__ = ["extract_config", "extract_features"]
