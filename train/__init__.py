"""featcache train."""
