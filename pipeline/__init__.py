"""featcache pipeline (stage 1): teachers over a dataset, once, into a feature store.

From Python: ``extract_features(config, source={...}, ...)`` runs what ``featcache-extract`` runs
and returns its ``Summary`` (docs/python-api.md). ``featcache.pipeline.extract`` is the engine module.
"""

from .api import extract_config, extract_features


def __getattr__(name: str):
    if name == "Summary":
        from .outcome import Summary
        return Summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Summary", "extract_config", "extract_features"]
