"""Session configuration carried in the model's metadata, which ONNX Runtime applies to the session.

ONNX Runtime reads one metadata key, ``ort_config``, when the host sets ``ORT_LOAD_CONFIG_FROM_MODEL=1``
(``onnxruntime/core/session/inference_session_utils.cc``): a JSON object whose ``session_options`` may set
``intra_op_num_threads``, ``inter_op_num_threads``, ``execution_mode``, ``graph_optimization_level`` and
``enable_profiling``, overriding what the host configured. Checked against onnxruntime 1.32: a model whose
``ort_config`` asks for 300 intra-op threads makes the session start 300 threads, and ``enable_profiling: 1``
makes every session write a profiling JSON into the process's working directory; other keys
(``profile_file_prefix``, ``session.*``, ...) are ignored, and so are ``session.*``/``ort.*`` metadata keys.

A model has no business configuring the host's runtime: thread counts are a denial of service (thread
exhaustion, oversubscription), profiling writes files and timing data wherever the server runs, the
optimization level and execution mode change what runs. Keys that look like runtime configuration but that
ONNX Runtime does not read are noted (low): a serving stack that copies metadata into session options would
apply them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote

ORT_CONFIG_KEY = "ort_config"
# What ONNX Runtime's ParseSessionOptionsFromModelProto applies; every other key is ignored.
HONOURED = ("intra_op_num_threads", "inter_op_num_threads", "execution_mode", "graph_optimization_level",
            "enable_profiling")
THREAD_KEYS = ("intra_op_num_threads", "inter_op_num_threads")
# Thread counts a model may ask for before it is a denial of service rather than a tuning hint: more than
# any host this scanner runs on has cores.
MAX_MODEL_THREADS = 64
# Metadata keys shaped like ONNX Runtime's session config keys ("session.intra_op.allow_spinning", ...).
LOOKALIKE_PREFIXES = ("session.", "ort.", "ep.", "onnxruntime.", "ort_")


class SessionConfig(BaseCheck):
    id = "metadata.session-config"
    severity = Severity.HIGH
    title = ("metadata carries session configuration ONNX Runtime applies (ort_config: threads, profiling; high), "
             "other options it applies (medium), or keys shaped like runtime configuration (low)")

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for prop in ctx.parsed.metadata_props:
            if prop.key == ORT_CONFIG_KEY:
                yield from self._ort_config(ctx, prop.value)
            elif prop.key.lower().startswith(LOOKALIKE_PREFIXES):
                yield self.finding(ctx, f"metadata key {quote(prop.key)} looks like ONNX Runtime session "
                                        "configuration; onnxruntime 1.32 does not read it from a model, but a "
                                        "serving stack that copies metadata into its session options would apply "
                                        "it", severity=Severity.LOW)

    def _ort_config(self, ctx: ScanContext, text: str) -> Iterable[Finding]:
        try:
            config = json.loads(text)
        except (ValueError, RecursionError):
            yield self.finding(ctx, "metadata 'ort_config' is not JSON: ONNX Runtime refuses to load the model "
                                    "when ORT_LOAD_CONFIG_FROM_MODEL=1", severity=Severity.MEDIUM)
            return
        options = config.get("session_options") if isinstance(config, dict) else None
        if not isinstance(options, dict):
            yield self.finding(ctx, "metadata 'ort_config' holds runtime configuration (no session_options ONNX "
                                    "Runtime applies)", severity=Severity.LOW)
            return
        applied = {k: v for k, v in options.items() if k in HONOURED}
        ignored = sorted(k for k in options if k not in HONOURED)
        risky = []
        for key in THREAD_KEYS:
            value = applied.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_MODEL_THREADS:
                risky.append(f"{key} = {value:,} (a thread per unit: more than {MAX_MODEL_THREADS})")
        if applied.get("enable_profiling") not in (None, 0, False):
            risky.append("enable_profiling (every session writes a profiling JSON into the working directory)")
        shown = ", ".join(f"{quote(k)} = {json.dumps(v)[:40]}" for k, v in applied.items())
        rest = f"; ignored: {', '.join(quote(k) for k in ignored[:8])}" if ignored else ""
        if risky:
            yield self.finding(ctx, f"metadata 'ort_config' sets session options ONNX Runtime applies when "
                                    f"ORT_LOAD_CONFIG_FROM_MODEL=1: {'; '.join(risky)}{rest}")
        elif applied:
            yield self.finding(ctx, f"metadata 'ort_config' sets session options ONNX Runtime applies when "
                                    f"ORT_LOAD_CONFIG_FROM_MODEL=1, overriding the host's: {shown}{rest}",
                               severity=Severity.MEDIUM)
        else:
            yield self.finding(ctx, f"metadata 'ort_config' holds session options ONNX Runtime ignores{rest}",
                               severity=Severity.LOW)


CHECKS = (SessionConfig(),)
