"""Errors a user can act on. Their messages name the file, field or key that was wrong."""


class KitError(Exception):
    """Base class: the CLI prints the message (no traceback) and exits with status 2."""


class DataError(KitError):
    """A dataset, image or index file is missing, malformed or unreadable."""


class ConfigError(KitError):
    """A configuration key, value or path is wrong."""


def few_keys(items: list[str], limit: int = 8) -> str:
    """The first few names of a list, for error messages."""
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', … +{len(items) - limit} more' if len(items) > limit else ''}]"


def clean_worker_errors(batches):
    """Iterate a DataLoader; a KitError raised in a worker process comes out as its own one-line message.

    PyTorch re-raises a worker's exception in the main process as the same type, but with the worker's
    whole traceback pasted into the message; the user needs only the last line (which names the file).
    """
    try:
        yield from batches
    except KitError as exc:
        text = str(exc)
        if not text.startswith("Caught ") or "Original Traceback" not in text:
            raise
        raise type(exc)(text.rstrip().rsplit(f"{type(exc).__name__}: ", 1)[-1]) from None
