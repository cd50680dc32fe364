"""Metadata: oversized values (a denial of service for logs and UIs, or a payload hidden in the model) and
control characters (terminal escape sequences, log injection, bidirectional overrides that make text read
differently from what it is, as in CVE-2021-42574 "Trojan Source")."""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator

import onnx

from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote

# Whitespace that free text such as doc strings legitimately holds.
TEXT_WHITESPACE = "\t\n\r"
# The Unicode categories reported: control (Cc), format (Cf: bidirectional overrides, zero-width characters), line
# and paragraph separators (Zl, Zp).
CONTROL_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp"))


def _fields(model: onnx.ModelProto) -> Iterator[tuple[str, str, bool]]:
    """(where, text, is free text) for every human-readable string at the model's top level."""
    for p in model.metadata_props:
        yield f"metadata key {quote(p.key)}", p.key, False
        yield f"metadata value of {quote(p.key)}", p.value, True
    for name in ("producer_name", "producer_version", "domain"):
        yield name, getattr(model, name), False
    yield "doc_string", model.doc_string, True
    yield "graph name", model.graph.name, False
    yield "graph doc_string", model.graph.doc_string, True


@functools.cache
def _control_points() -> tuple[int, ...]:
    """Every code point in ``CONTROL_CATEGORIES``, from this Python's Unicode database (about 230; found once, in
    0.2-0.5 s)."""
    return tuple(c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in CONTROL_CATEGORIES)


@functools.lru_cache(maxsize=64)
def _pattern(skip: frozenset[str]) -> re.Pattern[str] | None:
    """A character class of the control code points not in ``skip``; None when none is left."""
    ranges: list[tuple[int, int]] = []
    for c in _control_points():
        if chr(c) in skip:
            continue
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))
    if not ranges:
        return None
    return re.compile("[" + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "")
                                    for a, b in ranges) + "]")


def control_characters(text: str, free_text: bool) -> list[str]:
    """The control and format characters in ``text`` as ``U+XXXX``; ``free_text`` allows ordinary whitespace.

    The strings are the attacker's: a Python loop over each character took 15 s on a 50 MB metadata value (2-core
    AMD EPYC, AVX2). Printable text is passed by ``str.isprintable`` (0.2 s there); any other is searched in one
    pass, each character found leaving the expression (1.7 s there), so neither time nor memory grows with how
    often a character repeats."""
    if text.isprintable():  # none of CONTROL_CATEGORIES (nor Zs, Cn, Co, Cs), at C speed: the common case
        return []
    skip, found, pos = set(TEXT_WHITESPACE if free_text else ""), set(), 0
    while (pattern := _pattern(frozenset(skip))) is not None and (match := pattern.search(text, pos)) is not None:
        c = match.group()
        found.add(c)
        skip.add(c)
        pos = match.end()
    return sorted(f"U+{ord(c):04X}" for c in found)


class Size(BaseCheck):
    id = "metadata.size"
    severity = Severity.MEDIUM
    title = ("a metadata value or doc string is over max_metadata_value_bytes, or all metadata over "
             "max_metadata_total_bytes")

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        policy = ctx.policy
        for where, text, _ in _fields(ctx.parsed):
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > policy.max_metadata_value_bytes:
                yield self.finding(ctx, f"{where} is {size:,} bytes, over the limit of "
                                        f"{policy.max_metadata_value_bytes:,}")
        total = sum(len((p.key + p.value).encode("utf-8", "surrogatepass")) for p in ctx.parsed.metadata_props)
        if total > policy.max_metadata_total_bytes:
            yield self.finding(ctx, f"metadata_props hold {total:,} bytes, over the limit of "
                                    f"{policy.max_metadata_total_bytes:,}")


class ControlCharacters(BaseCheck):
    id = "metadata.control-characters"
    severity = Severity.MEDIUM
    title = "metadata or model strings contain control or bidirectional-override characters"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for where, text, free in _fields(ctx.parsed):
            found = control_characters(text, free)
            if found:
                shown = ", ".join(found[:8]) + (" ..." if len(found) > 8 else "")
                yield self.finding(ctx, f"{where} contains control characters ({shown})")


CHECKS = (Size(), ControlCharacters())
