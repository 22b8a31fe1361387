"""User-facing errors: one type per failure a user can act on.

Each carries the file it is about, what is wrong and what to try, and renders as one line:
``scan.ply: 412 points, a body scan needs at least 2000. Check the file is a whole body scan.``
Library code raises these; the pipeline layer catches them per scan, logs them and goes on.
"""

from __future__ import annotations

from pathlib import Path


class GhumPipeError(Exception):
    """Base class. ``path``: the file concerned (or None); ``hint``: what the user can do."""

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.message.rstrip(".") + "."
        if self.path:
            text = f"{self.path}: {text}"
        if self.hint:
            text = f"{text} {self.hint.rstrip('.')}."
        return text

    def __reduce__(self):  # keep the fields when pickled across Dask workers
        return (type(self), (self.message, self.path, self.hint))


class ScanError(GhumPipeError):
    """The scan file cannot be used: unreadable, empty, non-finite, too small, not a person."""


class LandmarkError(GhumPipeError):
    """Landmarks could not be found on a scan (no person in enough views, too sparse)."""


class RegistrationError(GhumPipeError):
    """Registration failed: too few landmarks, divergence, residual above threshold."""


class ModelError(GhumPipeError):
    """A trained model cannot be used: missing files, a different template, bad config."""


class ExportError(GhumPipeError):
    """A registration or model cannot be exported: missing or inconsistent files, another template."""
