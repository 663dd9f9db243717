"""The two kinds of mistake a user can act on, which every room's errors derive from.

The command-line door turns them into exit codes (``plumbing/cli.py``): a ``UsageError`` is a wrong
argument or config value (exit 2), a ``DataError`` is a problem with the data or a store (exit 1);
anything else that escapes is a bug in featcache (exit 3).
"""


class UsageError(ValueError):
    """A wrong argument, config key or value: the user fixes the command or the config."""


class DataError(Exception):
    """The inputs or a store are missing, damaged or not what was asked for: the user fixes the data."""
