"""Exceptions the `data-select` CLI prints as one line instead of a traceback."""
from __future__ import annotations


class DataSelectError(ValueError):
    """A data problem the user must fix; the message names the file, key or input involved."""


class UsageError(DataSelectError):
    """Bad arguments or configuration; printed without a traceback."""


class NoDocumentsError(DataSelectError):
    """The inputs held no usable document at all (the message carries the rejection counts)."""


class InputFileError(DataSelectError):
    """One input file cannot be read; the reader counts it under :attr:`reason` and goes on."""

    reason = "unreadable"


class CorruptInput(InputFileError):
    """A broken compressed stream or container (the rest of that file is lost)."""

    reason = "corrupt"


class SpecialFile(InputFileError):
    """A FIFO, socket or device: never opened, whatever its name."""

    reason = "special_file"


class UnsupportedFormat(InputFileError):
    """A format the reader does not read (archive, other compressor, binary data format)."""

    reason = "unsupported_format"


class HashingFeaturesWarning(UserWarning):
    """DiSF on hashing features (docs/RESULTS.md (c)); the CLI prints it once as a note."""
