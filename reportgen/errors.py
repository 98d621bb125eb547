"""Errors a user can act on.

Every error raised for bad input names the file or option at fault and what to do about it; the CLI turns them
into a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations


class ReportgenError(Exception):
    """Base class of every error reportgen raises on purpose."""

    exit_code = 1


class InputError(ReportgenError):
    """Bad input or usage: a model, image, option or output folder we cannot use (exit code 2)."""

    exit_code = 2


class ModelLoadError(InputError):
    """The model file, folder or application name cannot be loaded."""


class ImageError(InputError):
    """No usable image, or an image option that does not fit the model."""


class OutputError(InputError):
    """The output folder cannot be written as asked (exists, not a report, no --force)."""
