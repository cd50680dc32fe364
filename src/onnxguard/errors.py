"""Every error onnxguard raises on purpose, and the exit code the CLI gives it.

::

    OnnxguardError              the command could not run: bad argument, missing or unreadable input (exit 2)
    ├── InputError              a path, spec or option given by the user is wrong
    ├── ModelError              an ONNX file or bundle cannot be read or is not what it claims to be
    ├── ConversionError         the source model could not be loaded or exported
    ├── BundleError             a bundle is incomplete, malformed, or its files do not match the manifest
    └── CheckFailed             the command ran and a check failed (exit 1): parity out of tolerance, ...

The CLI catches ``OnnxguardError`` once, prints its message on one line and exits with ``exit_code``.
Messages name the file involved and say what to do about it.
"""

from __future__ import annotations


class OnnxguardError(Exception):
    """The command could not run. Exit code 2."""

    exit_code = 2


class InputError(OnnxguardError):
    """A path, spec or option given by the user is wrong."""


class ModelError(OnnxguardError):
    """An ONNX model cannot be read, or is not an ONNX model."""


class ConversionError(OnnxguardError):
    """The source model could not be loaded or exported to ONNX."""


class BundleError(OnnxguardError):
    """A bundle is incomplete or malformed, or a file does not match the manifest."""


class CheckFailed(OnnxguardError):
    """The command ran, and a check it performs failed. Exit code 1."""

    exit_code = 1
