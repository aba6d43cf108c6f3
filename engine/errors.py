"""Error hierarchy: every error carries a message a GIS user understands and what to do next."""
from __future__ import annotations


class HSSCLError(Exception):
    """Root of all errors raised on purpose by the engine.

    ``message`` says what is wrong, ``hint`` what to try; ``details`` is optional technical text.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str = "", details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class InputError(HSSCLError):
    """An input raster cannot be used as given (unreadable, not a raster, empty, too small...)."""


class NoOverlapError(InputError):
    """Reference and target do not cover any common ground."""


class GeoreferencingError(InputError):
    """One raster is georeferenced and the other is not, or a CRS cannot be used."""


class NotEnoughMatchesError(HSSCLError):
    """Matching did not produce enough reliable evidence for the requested transform."""

    exit_code = 3


class OutputError(HSSCLError):
    """The outputs cannot be written (folder not writable, exists without --overwrite...)."""


class OutputExistsError(OutputError):
    """An output exists and overwriting was not asked for."""


class DiskFullError(OutputError):
    """The disk holding the outputs is full (or a quota / file size limit is reached); nothing was replaced."""


class FolderLockedError(OutputError):
    """Another run is writing into the same output folder (one writer per folder)."""


class WeightsError(HSSCLError):
    """Model weights are missing, corrupt, or do not fit the network."""


class DeviceError(HSSCLError):
    """The requested compute device cannot be used."""


class CancelledError(HSSCLError):
    """The user cancelled the run."""

    exit_code = 130

    def __init__(self, message: str = "Cancelled by the user.", hint: str = "", details: str = "") -> None:
        super().__init__(message, hint, details)
