"""The bundle manifest (``manifest.json``), format ``onnxguard-bundle/1``: the wire format, in pydantic.

The JSON Schema shipped in ``schemas/manifest-1.schema.json`` is generated from these models
(``python -m onnxguard.bundle.manifest > src/onnxguard/schemas/manifest-1.schema.json``); a test keeps the two equal.
Readers in other languages validate against that file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT: Literal["onnxguard-bundle/1"] = "onnxguard-bundle/1"
SHA256 = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tensor(_Strict):
    """A graph input or output: name, element type, shape and, for an output, how parity judges it."""

    name: str
    dtype: str
    shape: list[int | str | None] | None
    role: str | None = Field(default=None, description="scores | labels | values: how parity judges this output")


class Source(_Strict):
    """Where the model came from: the framework, the spec as given, the task, the exporter, the source files' sha256."""

    framework: str = Field(description="pytorch | transformers | sklearn")
    framework_version: str
    identifier: str = Field(description="the source spec as given")
    task: str | None
    exporter: str
    files: dict[str, str] = Field(description="sha256 of each source file, by path")
    architecture: dict[str, Any] | None = Field(default=None,
                                                description="transformers: model_type, num_heads, hidden_size")


class Model(_Strict):
    """The bundle's ONNX model: its file, the plaintext's sha256 and size, its opsets and signature."""

    file: str
    sha256: str = Field(pattern=SHA256, description="sha256 of the plaintext ONNX file")
    size: int
    opset: dict[str, int]
    ir_version: int
    producer: str
    inputs: list[Tensor]
    outputs: list[Tensor]


class File(_Strict):
    """One bundle file as the manifest lists it: sha256 and size."""

    sha256: str = Field(pattern=SHA256)
    size: int


class Step(_Strict):
    """One step applied to the model (convert, optimize, quantize, select, ...), its settings and figures."""

    name: str
    settings: dict[str, Any] = Field(default_factory=dict)
    figures: dict[str, Any] = Field(default_factory=dict)


class Golden(_Strict):
    """The golden set's file, its batch and example counts, and where its inputs came from."""

    file: str
    batches: int
    items: int
    origin: str = Field(description="signature | npz | texts: where the golden inputs came from")


class OutputParity(_Strict):
    """The manifest's record of one output's parity with the source framework."""

    name: str
    role: str
    items: int
    max_abs: float
    mean_abs: float
    min_cosine: float | None
    label_agreement: float | None
    passed: bool
    failures: list[str] = Field(default_factory=list)


class Parity(_Strict):
    """The manifest's record of the parity report: the verdict, the tolerance and each output's figures."""

    passed: bool
    tolerance: dict[str, float]
    batches: int
    items: int
    outputs: list[OutputParity]
    notes: list[str] = Field(default_factory=list)


class SealedFile(_Strict):
    """A sealed file's plaintext name, sha256 and size, checked after every decryption."""

    plaintext: str = Field(description="the file's name before sealing (model.onnx, golden.npz)")
    sha256: str = Field(pattern=SHA256, description="sha256 of the plaintext, checked after decryption")
    size: int


class Sealed(_Strict):
    """The bundle's model and golden files are age-encrypted (``onnxguard seal``)."""

    format: Literal["age-encryption.org/v1"] = "age-encryption.org/v1"
    recipients: list[str] = Field(description="public recipients (age1..., ssh-ed25519 ..., ssh-rsa ...) as given")
    passphrase: bool = Field(default=False, description="a passphrase can open the bundle too (see key_file)")
    key_file: str | None = Field(default=None, description="passphrase mode: a bundle file holding an X25519 "
                                 "identity that the files are also sealed to, itself age-encrypted with the passphrase")
    files: dict[str, SealedFile] = Field(description="each sealed file of the bundle, by its name in the bundle")


class Lengths(_Strict):
    """How ``runtime.LengthAware`` runs a padded batch of this model without its padding, measured by ``build``."""

    mask: str = Field(description="the attention mask input that gives each row's real length")
    cost: dict[str, float] = Field(description="overhead_ms, token_ms, token2_ms: one run of B rows at width L "
                                   "takes overhead + B*L*(token + token2*L) ms")
    max_buckets: int
    shift_free: bool = Field(description="outputs do not depend on where padding sits: left-padded rows may move")
    sequence_outputs: list[str] = Field(description="outputs with a sequence axis (axis 1), padded back")
    measured: dict[str, Any] = Field(default_factory=dict, description="threads, CPU, the timed points")


class Manifest(_Strict):
    """The bundle's ``manifest.json``: what the bundle is, how it was made, and every file's sha256."""

    format: Literal["onnxguard-bundle/1"] = FORMAT
    name: str
    version: str
    created: str = Field(description="UTC, ISO 8601")
    onnxguard_version: str
    source: Source
    model: Model
    files: dict[str, File] = Field(description="every file of the bundle but manifest.json and model.sig")
    labels: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    steps: list[Step] = Field(default_factory=list)
    golden: Golden | None = None
    parity: Parity | None = None
    scan: dict[str, Any] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    lengths: Lengths | None = Field(default=None, description="text models: the bucket plan for running padded "
                                    "batches without their padding")
    sealed: Sealed | None = Field(default=None, description="set when the bundle is sealed: model.file and "
                                  "golden.file then name the .age files; model.sha256 stays the plaintext's")


def now() -> str:
    """The current UTC time to the second in ISO 8601 with ``Z``, as the manifest records it."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12), as shipped in ``schemas/manifest-1.schema.json``."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://onnxguard.dev/schemas/manifest-1.schema.json"
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
