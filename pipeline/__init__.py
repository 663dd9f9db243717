"""featcache pipeline."""
