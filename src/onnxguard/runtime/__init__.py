"""The torch-free runtime: the one place an ONNX Runtime session is made, and the way a bundle is run.

* :func:`session`, :func:`run`, :func:`isolated` and the load/run error types: :mod:`onnxguard.runtime.core`.
* :class:`LengthAware`: a padded text batch run without its padding, bucket by bucket, per a
  :class:`LengthPlan` measured at build time: :mod:`onnxguard.runtime.lengths`.
* :func:`load`: a bundle opened through the trust door, ready to run in one line:
  ``runtime.load(path, policy).run({"input_ids": ..., "attention_mask": ...}) -> {"logits": ...}``
  (:mod:`onnxguard.runtime.loading`).
"""

from onnxguard.runtime.core import (
    EXTERNAL_FOLDER_KEY,
    LEVELS,
    LOAD_ERRORS,
    LOG_SEVERITY,
    ORT_FORMAT_ID,
    RUN_ERRORS,
    SPIN_STOP,
    Batch,
    first_line,
    isolated,
    run,
    session,
)
from onnxguard.runtime.lengths import Cost, LengthAware, LengthPlan
from onnxguard.runtime.loading import Loaded, load

__all__ = ["EXTERNAL_FOLDER_KEY", "LEVELS", "LOAD_ERRORS", "LOG_SEVERITY", "ORT_FORMAT_ID", "RUN_ERRORS", "SPIN_STOP",
           "Batch", "Cost", "LengthAware", "LengthPlan", "Loaded", "first_line", "isolated", "load", "run", "session"]
