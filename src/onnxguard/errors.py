"""Every error onnxguard raises on purpose, and the exit code the CLI gives it.

::

    OnnxguardError              the command could not run: bad argument, missing or unreadable input (exit 2)
    ├── InputError              a path, spec or option given by the caller is wrong
    ├── ModelError              an ONNX file or bundle cannot be read or is not what it claims to be
    ├── ConversionError         the source model could not be loaded or exported
    ├── BundleError             a bundle is incomplete, malformed, or its files do not match the manifest
    └── CheckFailed             the call ran and a check failed (exit 1): parity out of tolerance, a signature, ...

An error carries three things apart: the ``message`` (what is wrong, naming the file), a ``hint`` (what to do,
in the library's words) and, when the remedy is something the caller must supply, a :class:`Remedy`. The
library never names a command-line flag: the CLI alone turns a ``Remedy`` into its flag (``--identity``), and
the server into a field of its configuration. ``str(error)`` is the message alone.
"""

from __future__ import annotations

import enum


class Remedy(enum.Enum):
    """Something the caller can supply to make the call work; each face (CLI, server) names it its own way."""

    IDENTITY = "the age identity that opens the sealed files"
    PASSPHRASE = "the passphrase of the passphrase-protected identity"
    PUBLIC_KEY = "the signer's public key, to check the signature"
    ALLOW_UNSIGNED = "an explicit policy that accepts an unsigned or unchecked bundle"
    ALLOW_NOT_SCANNED = "an explicit policy that accepts a model that could not be scanned"
    OVERWRITE = "permission to replace the existing output"
    TRUST_PICKLE = "explicit trust in a pickle file"
    FORCE = "permission to keep a variant that failed the accuracy gate"
    OUTPUT = "another output path"
    INPUT_SHAPES = "the shape (and dtype) of each input of the model"
    EXPORTER = "the other PyTorch exporter"
    GOLDEN_INPUTS = "golden inputs as an .npz file"
    TASK = "the model's task"
    RECIPIENT = "a recipient to seal to (age1... or an ssh public key), or a passphrase"
    PASSWORD = "the password of the encrypted private key"


class OnnxguardError(Exception):
    """The call could not run. Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, remedy: Remedy | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.remedy = remedy

    def __str__(self) -> str:
        return self.message


class InputError(OnnxguardError):
    """A path, spec or option given by the caller is wrong."""


class ModelError(OnnxguardError):
    """An ONNX model cannot be read, or is not an ONNX model."""


class ConversionError(OnnxguardError):
    """The source model could not be loaded or exported to ONNX."""


class BundleError(OnnxguardError):
    """A bundle is incomplete or malformed, or a file does not match the manifest."""


class CheckFailed(OnnxguardError):
    """The call ran, and a check it performs failed. Exit code 1."""

    exit_code = 1
