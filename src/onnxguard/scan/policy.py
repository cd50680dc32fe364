"""The scan policy: every limit the scanner enforces, with its default, in one place.

A policy is built from a profile (``default`` or ``strict``) and then, optionally, a TOML file whose keys are
the field names of :class:`Policy` (an unknown key is an error, so a typo never silently keeps a default)::

    profile = "strict"                 # optional; --profile on the command line wins
    max_memory_bytes = 1073741824
    allowed_domains = ["", "ai.onnx", "ai.onnx.ml"]
    denied_ops = ["If", "Loop", "Scan"]

:func:`defaults_table` renders the table of defaults that docs/scan.md carries (a test keeps the two equal).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from onnxguard.errors import InputError

# --- security limits: each one answers a threat -------------------------------------------------------------

# Protobuf cannot parse a message of 2 GiB or more, and the scanner reads the whole file into memory to parse
# it: a larger .onnx file is either not a model or a memory-exhaustion attempt. Checked before parsing.
MAX_FILE_BYTES = 2**31 - 1

# One tensor allocated by an op whose output size comes from constant arguments (ConstantOfShape, Expand,
# Tile, Range, Resize, Pad, ...): a few bytes of graph can ask the runtime for terabytes ("shape bombs",
# a denial of service at session creation or first run). 4 GiB is above any activation an ordinary model
# creates from constants. Also the limit for one graph input with fully fixed dims.
MAX_MEMORY_BYTES = 4 * 2**30

# Subgraphs nest through If / Loop / Scan attributes; deep nesting makes loaders and shape inference recurse
# (stack exhaustion) and hides code from review. Exported models nest 0-2 levels.
MAX_NESTING_DEPTH = 8

# Every If / Loop / Scan node is a subgraph the runtime must build and may run many times: thousands of them
# are a cheap way to make loading or one request take minutes. Exported models have a handful.
MAX_CONTROL_FLOW_NODES = 1024

# metadata_props end up in logs, UIs and manifests; a huge value is a denial of service or a hidden payload.
MAX_METADATA_VALUE_BYTES = 64 * 2**10
MAX_METADATA_TOTAL_BYTES = 2**20

# A graph input whose fixed dim is this large makes every caller (and the server's validator) allocate it.
MAX_INPUT_DIM = 2**24

# A Loop with a constant trip count runs its body that many times at every call: a count of billions keeps a
# request (or the session's first run) busy for hours. Exported loops iterate over a sequence length or a
# beam: thousands. A million is far above them.
MAX_LOOP_ITERATIONS = 2**20

# Local functions calling local functions: ONNX Runtime and ONNX shape inference inline every call, so a chain
# N deep in which each level calls the next twice expands to 2**N bodies. Exporters (onnxscript, the dynamo
# exporter's module functions) nest a few levels.
MAX_FUNCTION_DEPTH = 16

# Domains whose operators ship with ONNX Runtime. Any other domain asks the runtime for a custom-op library,
# i.e. native code chosen by the model's author.
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# The domains ONNX Runtime registers itself (its own kernels, never a custom-op library), with what they hold.
# Its graph optimizer writes every one of them into the opset_import of a model it saves, used or not; its
# transformer optimizer and quantizer emit com.microsoft ops, its level-99 optimizer com.microsoft.nchwc ops.
# The default profile allows them (`scan` notes their use at info: domain.runtime); deployment targets still
# refuse the ones their runtime lacks (onnxguard.target.operators). A test keeps this list a superset of what
# the installed onnxruntime registers.
RUNTIME_DOMAINS: dict[str, str] = {
    "com.microsoft": "ONNX Runtime's contrib ops (fused transformer, quantized and other CPU/GPU kernels)",
    "com.microsoft.nchwc": ("ONNX Runtime's NCHWc-blocked CPU kernels, written by its level-99 (ORT_ENABLE_ALL) "
                            "optimizer: specific to the CPU the model was optimized on"),
    "com.ms.internal.nhwc": "ONNX Runtime's internal NHWC-layout ops, written by its layout transformer",
    "com.microsoft.experimental": "ONNX Runtime's experimental contrib domain",
    "org.pytorch.aten": "PyTorch ATen fallback ops, run by ONNX Runtime's ATen kernel through a registered executor",
    "ai.onnx.preview": "ONNX's preview domain, registered by ONNX Runtime",
    "ai.onnx.preview.training": "ONNX's training preview domain (optimizers, gradients), registered by ONNX Runtime",
    "ai.onnx.training": "ONNX's training domain, registered by ONNX Runtime",
}
ALLOWED_DOMAINS = (*STANDARD_DOMAINS, *RUNTIME_DOMAINS)

# External data: ``location`` must be a relative path inside the model's directory, after normalisation and
# after resolving symlinks, and may not be hardlinked. These are not policy knobs; they are always enforced.
# They answer CVE-2024-27318 (path traversal through external data), CVE-2024-5187 (path traversal on
# extraction), CVE-2025-51480 (path traversal writing external data) and the 2026 external-data advisories on
# paths, symlinks and hardlinks (CVE-2026-27489, CVE-2026-34445, CVE-2026-34446, CVE-2026-34447).
EXTERNAL_DATA_CVES = ("CVE-2024-27318", "CVE-2024-5187", "CVE-2025-51480", "CVE-2026-27489",
                      "CVE-2026-34445", "CVE-2026-34446", "CVE-2026-34447")

# --- profiles -----------------------------------------------------------------------------------------------

CONTROL_FLOW_OPS = ("If", "Loop", "Scan")
# Ops whose output size is chosen by tensor *values*, not input shapes: the raw material of shape bombs.
DYNAMIC_ALLOCATION_OPS = ("ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot",
                          "NonZero", "Unique", "Compress", "RandomNormal", "RandomUniform", "Multinomial")
SEQUENCE_OPS = ("SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt",
                "SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence")

PROFILES: dict[str, dict[str, Any]] = {
    # Every standard op, ONNX Runtime's own domains (com.microsoft, com.microsoft.nchwc, ...), the limits above.
    "default": {},
    # For models from outside the team: no control flow, no value-sized allocations, no runtime-specific ops.
    "strict": {
        "allowed_domains": STANDARD_DOMAINS,
        "denied_ops": CONTROL_FLOW_OPS + DYNAMIC_ALLOCATION_OPS + SEQUENCE_OPS,
        "max_memory_bytes": 2**30,
        "max_nesting_depth": 2,
        "max_control_flow_nodes": 0,
        "max_loop_iterations": 2**16,
        "max_function_depth": 4,
        "max_metadata_value_bytes": 4 * 2**10,
    },
}


def _doc(text: str) -> dict:
    return {"doc": text}


@dataclass(frozen=True)
class Policy:
    """What the scanner allows. Field names are the TOML keys."""

    profile: str = field(default="default", metadata=_doc("the profile this policy started from"))
    max_file_bytes: int = field(default=MAX_FILE_BYTES, metadata=_doc(
        "largest .onnx file read at all (checked before parsing)"))
    max_memory_bytes: int = field(default=MAX_MEMORY_BYTES, metadata=_doc(
        "largest tensor an op may allocate from constant arguments; largest fixed-shape graph input"))
    max_nesting_depth: int = field(default=MAX_NESTING_DEPTH, metadata=_doc("deepest subgraph nesting"))
    max_control_flow_nodes: int = field(default=MAX_CONTROL_FLOW_NODES, metadata=_doc(
        "most If / Loop / Scan nodes in the model, subgraphs and functions included"))
    max_metadata_value_bytes: int = field(default=MAX_METADATA_VALUE_BYTES, metadata=_doc(
        "largest metadata_props value or doc string"))
    max_metadata_total_bytes: int = field(default=MAX_METADATA_TOTAL_BYTES, metadata=_doc(
        "all metadata_props keys and values together"))
    max_input_dim: int = field(default=MAX_INPUT_DIM, metadata=_doc("largest fixed dim of a graph input"))
    max_loop_iterations: int = field(default=MAX_LOOP_ITERATIONS, metadata=_doc(
        "largest constant trip count of a Loop (one computed from constants counts too)"))
    max_function_depth: int = field(default=MAX_FUNCTION_DEPTH, metadata=_doc(
        "longest chain of model-local functions calling each other"))
    allowed_domains: tuple[str, ...] = field(default=ALLOWED_DOMAINS, metadata=_doc(
        "operator domains nodes and opset_import may use (\"\" is the default ONNX domain)"))
    allowed_ops: tuple[str, ...] | None = field(default=None, metadata=_doc(
        "when set, only these ops (`Op` in any domain, or `domain:Op`); unset allows every op"))
    denied_ops: tuple[str, ...] = field(default=(), metadata=_doc("ops refused (`Op` or `domain:Op`)"))


_INT_FIELDS = {f.name for f in fields(Policy) if f.type == "int"}
_LIST_FIELDS = {"allowed_domains", "allowed_ops", "denied_ops"}


def for_profile(name: str = "default") -> Policy:
    """The policy of a named profile."""
    if name not in PROFILES:
        raise InputError(f"unknown scan profile {name!r}; use one of {', '.join(PROFILES)}")
    return dataclasses.replace(Policy(), profile=name, **PROFILES[name])


def from_mapping(data: dict, profile: str | None = None, source: str = "policy") -> Policy:
    """A policy from TOML-shaped data; ``profile`` (from the command line) wins over the data's own."""
    unknown = sorted(set(data) - {f.name for f in fields(Policy)})
    if unknown:
        known = ", ".join(f.name for f in fields(Policy))
        raise InputError(f"{source}: unknown key {unknown[0]!r}; known keys: {known}")
    name = profile or data.get("profile", "default")
    if not isinstance(name, str):
        raise InputError(f"{source}: 'profile' must be a string")
    if profile is None and name not in PROFILES:
        raise InputError(f"{source}: unknown scan profile {name!r}; use one of {', '.join(PROFILES)}")
    values: dict[str, Any] = {}  # checked field by field below
    for key, value in data.items():
        if key == "profile":
            continue
        if key in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{source}: {key!r} must be a non-negative integer, got {value!r}")
            values[key] = value
        elif key in _LIST_FIELDS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(f"{source}: {key!r} must be a list of strings, got {value!r}")
            values[key] = tuple(value)
    return dataclasses.replace(for_profile(name), **values)


def load(path: str | os.PathLike[str], profile: str | None = None) -> Policy:
    """Read a TOML policy file. Every problem is an ``InputError`` naming the file (exit 2)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such policy file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read the policy file ({e})") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{p}: not valid TOML ({e})") from e
    return from_mapping(data, profile, str(p))


def _show(value: object) -> str:
    if value is None:
        return "any"
    if isinstance(value, tuple):
        return ", ".join(f'"{v}"' for v in value) if value else "none"
    if isinstance(value, int) and value >= 2**20:
        return f"{value:,}"
    return f"{value}"


def defaults_table() -> str:
    """Markdown table of every policy key, its default and its strict value (embedded in docs/scan.md)."""
    default, strict = for_profile("default"), for_profile("strict")
    rows = ["| key | default | strict | what it limits |", "|---|---|---|---|"]
    for f in fields(Policy):
        if f.name == "profile":
            continue
        rows.append(f"| `{f.name}` | {_show(getattr(default, f.name))} | {_show(getattr(strict, f.name))} "
                    f"| {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"
