"""Bounded work: every check runs under a budget, so that no model can stall the scanner or blow it up.

A model is a few bytes that describe an arbitrary amount of work: a chain of shape arithmetic that doubles a
vector at every step, tens of thousands of tiny control-flow nodes, local functions that call each other two
at a time, ``Range`` or ``ConstantOfShape`` asked for terabytes. The scanner must *measure* such a model, never
execute what it describes. So each check runs under a :class:`Budget`:

- nodes visited (every walk over a graph body charges its nodes),
- elements folded (every constant value the symbolic pass computes charges its element count; no single
  value larger than ``MAX_FOLD_ELEMENTS`` is ever computed: a tensor the model only describes is never
  materialised),
- nesting depth (subgraphs and function calls followed),
- wall time (a deadline per check, and one for the whole scan).

Running out of budget raises :class:`BudgetExceeded`; the scan runner reports it as a CRITICAL
``scan.budget`` finding, so a model that exhausts a budget fails the scan at every ``fail_on`` level: never
a pass, never a hang, never an out-of-memory kill.

The budget of the running check is held in a context variable (thread-safe: the server may scan in several
threads). Code that walks a model outside a scan (the runtime's external-data guard, for one) runs
:data:`UNBOUNDED`, which counts nothing.

ONNX's own checker and shape inference are C++ and cannot be interrupted: they run only when a model is
within the ``INFERENCE_*`` budgets below (measured first, by a bounded walk), and are otherwise skipped with a
``scan.budget`` finding.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

# --- budgets: each one bounds a way a model can make the scanner work -------------------------------------

# Wall time one check may take. Every check is linear in the model's size and takes well under a second on
# the largest ordinary models (a 250 MB model scans in about a second in all); ten seconds is a backstop for
# what the counters below do not see, never a limit an ordinary model meets.
CHECK_SECONDS = 10.0

# Wall time the whole scan may take: the sum of checks is bounded too, so a model that keeps every check
# just under its own deadline still cannot keep a CI job or a server start-up busy for minutes.
SCAN_SECONDS = 30.0

# Nodes a model may hold, subgraphs and local-function bodies included. Exported models hold from a few
# hundred (CNNs) to a few tens of thousands (large transformers) of nodes; a model of hundreds of thousands
# of nodes is made to exhaust whoever loads it. Over it, the model is not scanned further (a finding).
MAX_MODEL_NODES = 300_000

# Nodes one check may visit in all. A check walks the model a few times (its own walk, the shared analyses it
# is the first to ask for, subgraphs' outer reads), so a model within MAX_MODEL_NODES stays well within this; a
# check that goes past it is looping.
MAX_NODES_VISITED = 8 * MAX_MODEL_NODES

# One folded (computed) constant: shape arguments are vectors of a few values, small constant tensors a
# few thousand. A bigger value is never computed: the symbolic pass keeps only its shape.
MAX_FOLD_ELEMENTS = 4096

# Elements one check may fold in all (about 16 MB of int64 at most): thousands of small shape computations.
# A chain that keeps producing foldable values past this is built to exhaust the folder.
MAX_FOLDED_ELEMENTS = 2_000_000

# Subgraph nesting and local-function call depth any walk follows. Protobuf refuses messages nested about
# 30 graphs deep anyway; exported models nest 0-3 levels. Deeper is built to exhaust recursion.
MAX_WALK_DEPTH = 64

# Memory parsing the file may take beyond its payloads (tensor data, bounded by max_file_bytes), estimated on the
# wire format before parsing (scan.wire): every message, string and repeated number is an object once parsed,
# so a file of tiny messages parses into 20 to 100 times its size. Ordinary graphs of the largest size the
# scanner walks (MAX_MODEL_NODES) parse into a few hundred MB; over this the file is not parsed at all.
MAX_PARSE_OVERHEAD = 512 * 2**20

# Fields the wire walk reads before it gives up (about 2 s of walking); ordinary graphs of MAX_MODEL_NODES
# nodes hold a few million. Files small enough that no content can parse past MAX_PARSE_OVERHEAD are not
# walked at all.
MAX_WIRE_FIELDS = 6_000_000

# --- budgets for ONNX's own C++ passes, measured before they run ----------------------------------------

# onnx.checker and shape inference visit every node; shape inference also infers every local-function
# body again at every call site (a call chain that doubles at each level costs 2**depth), so its cost is
# the *inlined* node count. 300,000 nodes take onnx's strict inference under two seconds here, the checker half
# a second: above MAX_MODEL_NODES, so any model the scanner walks is checked, and an inlining bomb is not.
INFERENCE_NODES = 500_000

# Shape inference copies the names visible from the enclosing graphs into every subgraph it infers: the
# cost is the sum, over subgraphs, of the names in scope. 8,000 If nodes in a chain (64 million names
# copied) take onnx six seconds; this keeps it under a second or two.
INFERENCE_SCOPE_NAMES = 10_000_000

# ONNX's data propagation (data_prop=True) expands every shape vector it follows into a protobuf message per
# element: a Concat doubling chain 25 steps long is 33 million dims and tens of GB. Data propagation runs only
# when no shape vector the symbolic pass found is longer than this (ranks are below 10 in practice).
INFERENCE_SHAPE_DATA = 1024


class BudgetExceeded(Exception):
    """A check ran out of one of its budgets: ``resource`` (what ran out), how much it used, its limit."""

    def __init__(self, resource: str, used: float, limit: float, detail: str = "") -> None:
        self.resource, self.used, self.limit, self.detail = resource, used, limit, detail
        shown_used = f"{used:,.1f} s" if resource == "wall time" else f"{int(used):,}"
        shown_limit = f"{limit:,.0f} s" if resource == "wall time" else f"{int(limit):,}"
        where = f" ({detail})" if detail else ""
        super().__init__(f"{resource}: {shown_used} over the budget of {shown_limit}{where}")


@dataclass
class Budget:
    """What one check may still spend. ``visit``, ``fold``, ``enter`` and ``tick`` raise
    :class:`BudgetExceeded` when a limit is passed; the wall clock is read every ``CLOCK_EVERY`` units."""

    deadline: float = math.inf            # time.monotonic() value
    max_nodes: int = MAX_NODES_VISITED
    max_elements: int = MAX_FOLDED_ELEMENTS
    max_depth: int = MAX_WALK_DEPTH
    started: float = field(default_factory=time.monotonic)
    visited: int = 0
    folded: int = 0
    _since_clock: int = 0

    CLOCK_EVERY = 512

    def visit(self, n: int = 1, detail: str = "") -> None:
        """Charge ``n`` nodes visited."""
        self.visited += n
        if self.visited > self.max_nodes:
            raise BudgetExceeded("nodes visited", self.visited, self.max_nodes, detail)
        self._clock(n)

    def fold(self, n: int, detail: str = "") -> None:
        """Charge ``n`` elements folded (computed)."""
        self.folded += n
        if self.folded > self.max_elements:
            raise BudgetExceeded("elements folded", self.folded, self.max_elements, detail)
        self._clock(n)

    def enter(self, depth: int, detail: str = "") -> None:
        """Check that a walk at nesting ``depth`` is within the depth budget."""
        if depth > self.max_depth:
            raise BudgetExceeded("nesting depth", depth, self.max_depth, detail)

    def tick(self) -> None:
        """Check the wall clock now."""
        now = time.monotonic()
        if now > self.deadline:
            raise BudgetExceeded("wall time", now - self.started, self.deadline - self.started)

    def _clock(self, n: int) -> None:
        self._since_clock += n
        if self._since_clock >= self.CLOCK_EVERY:
            self._since_clock = 0
            self.tick()


class _Unbounded(Budget):
    """The budget outside a scan: counts nothing, never runs out."""

    def visit(self, n: int = 1, detail: str = "") -> None:
        return None

    def fold(self, n: int, detail: str = "") -> None:
        return None

    def enter(self, depth: int, detail: str = "") -> None:
        return None

    def tick(self) -> None:
        return None


UNBOUNDED: Budget = _Unbounded()

_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("onnxguard_scan_budget", default=None)
_memo: contextvars.ContextVar[dict[object, object] | None] = contextvars.ContextVar("onnxguard_scan_memo",
                                                                                     default=None)


def current() -> Budget:
    """The budget of the check running now (:data:`UNBOUNDED` outside a scan)."""
    return _current.get() or UNBOUNDED


@contextlib.contextmanager
def charged_to(budget: Budget) -> Iterator[Budget]:
    """Run the block with ``budget`` as the current budget."""
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)


@contextlib.contextmanager
def scan_memo() -> Iterator[dict[object, object]]:
    """A memo shared by the checks of one scan (analyses several checks read are made once)."""
    memo: dict[object, object] = {}
    token = _memo.set(memo)
    try:
        yield memo
    finally:
        _memo.reset(token)


def memo() -> dict[object, object] | None:
    """The memo of the scan running now, or ``None`` outside a scan."""
    return _memo.get()
