"""Errors a user can act on. Their messages name the file, field or key that was wrong."""


class KitError(Exception):
    """Base class: the CLI prints the message (no traceback) and exits with status 2."""


class DataError(KitError):
    """A dataset, image or index file is missing, malformed or unreadable."""


class ConfigError(KitError):
    """A configuration key, value or path is wrong."""
