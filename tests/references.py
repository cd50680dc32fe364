"""What a test can reach from an object: for proving that nothing a long-lived object holds keeps something large
(the model's bytes) alive."""

from __future__ import annotations

import gc
import types


def reaches(root: object, target: object) -> bool:
    """Whether ``target`` can be reached from ``root`` through references (``gc.get_referents``, which sees into
    every container, tracked by the collector or not: a dict of str to bytes is not), leaving out classes,
    modules and functions, whose globals reach everything."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        o = stack.pop()
        if o is target:
            return True
        if id(o) in seen or isinstance(o, type | types.ModuleType | types.FunctionType | types.BuiltinFunctionType):
            continue
        seen.add(id(o))
        stack.extend(gc.get_referents(o))
    return False
