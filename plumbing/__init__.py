"""featcache.plumbing: what every room and command needs and none owns.

Config loading (TOML into dataclasses), the command-line door (one-line errors, exit codes),
torch.distributed setup, ``pkg:`` paths, provenance, storage options for fsspec URLs, and the
atomic file write. Imports nothing else from featcache.
"""
