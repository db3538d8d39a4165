"""Exceptions the `data-select` CLI prints as one line instead of a traceback."""
from __future__ import annotations


class DataSelectError(ValueError):
    """A data problem the user must fix; the message names the file, key or input involved."""


class UsageError(DataSelectError):
    """Bad arguments or configuration; printed without a traceback."""


class NoDocumentsError(DataSelectError):
    """The inputs held no usable document at all (the message carries the rejection counts)."""
