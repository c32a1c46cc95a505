"""Exceptions raised by fedrec.

Every error that a user can cause (a bad config key or value, a missing or corrupt
data file, an unknown plugin name) is a :class:`FedrecError` whose message is one
line that names the culprit and, where it makes sense, the allowed values. The CLI
prints that line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class FedrecError(Exception):
    """Base class for user-facing errors (printed as one line by the CLI)."""


class ConfigError(FedrecError, ValueError):
    """An unknown configuration key or an invalid value."""


class DataError(FedrecError):
    """A dataset could not be found, downloaded, parsed or partitioned."""


class ChecksumError(DataError):
    """A data file's sha256 does not match the registered checksum."""


class PluginError(FedrecError):
    """A strategy plugin name could not be resolved or is malformed."""
