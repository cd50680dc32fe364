"""``memory.give_back()``: hand the C heap's free pages back to the system after a large load.

Opening a model parses it several times (the scanner, the external-data check, ONNX Runtime's own copy), in
pieces of a few MB that glibc serves from its heaps rather than from their own mappings once a large block has
raised its mmap threshold. Freed, those pieces stay in the process as holes that RSS counts: measured with the
FP32 DistilBERT-base bundle (260 MB), 300 MB of a served model's RSS after the load was such free heap, given
back by one ``malloc_trim(0)``. Elsewhere than glibc (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # no glibc (musl has no malloc_trim)
        return None


def give_back() -> bool:
    """Return the free pages of every malloc heap to the system (glibc's ``malloc_trim(0)``); True when the C
    library has it. Costs a walk of the heaps: call it after a load, not per request."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
