"""``diff.diff(reference, candidate, DiffOptions) -> DiffReport``: a candidate model against a known-clean reference.

A backdoor built from standard ops (a comparison on the input that overrides the output when a trigger appears)
passes every static rule; the mitigation is differential testing against a reference. Three parts:

1. structure (:mod:`.structural`): operators added, removed and changed; initializers changed and by how much;
   new branches (``Where``, ``If``, ``Loop``) whose condition derives from a graph input; inputs and outputs
   changed or rewired;
2. behaviour (:mod:`.behaviour`): both models on the golden inputs, max |diff| per output and label flips;
3. triggers (:mod:`.triggers`): every vocabulary token inserted into golden texts, or small patches on golden
   images, reporting what flips the candidate's prediction and not the reference's.

Each side is a :class:`~onnxguard.diff.subject.Subject`: an ``.onnx`` path (read through the one reader) or a
bundle opened through the door (``trust.open_bundle``, then :func:`~onnxguard.diff.subject.from_bundle`). Models
run through :mod:`onnxguard.runtime`; the library never prints and reports progress through ``progress``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from onnxguard.bundle.golden import Batch
from onnxguard.diff import behaviour, rules, structural, triggers
from onnxguard.diff.graph import index
from onnxguard.diff.options import DiffOptions
from onnxguard.diff.report import FORMATS, DiffReport, render
from onnxguard.diff.subject import Subject, from_bundle, from_file
from onnxguard.model import onnxfile
from onnxguard.progress import Event, Progress, silent
from onnxguard.scan.interface import Finding
from onnxguard.trust import OpenedBundle

__all__ = ["FORMATS", "DiffOptions", "DiffReport", "Subject", "diff", "from_bundle", "from_file", "render"]

Side = Subject | OpenedBundle | str | os.PathLike[str]


def _subject(side: Side) -> Subject:
    if isinstance(side, Subject):
        return side
    if isinstance(side, OpenedBundle):
        return from_bundle(side)
    return from_file(side)


def _golden(ref: Subject, cand: Subject, options: DiffOptions,
            generate: Callable[[], list[Batch]]) -> tuple[list[Batch], str]:
    if options.golden is not None:
        return list(options.golden.inputs), "the golden inputs given"
    if ref.golden is not None:
        return list(ref.golden.inputs), "the reference's golden set"
    if cand.golden is not None:
        return list(cand.golden.inputs), "the candidate's golden set"
    return generate(), "generated from the reference's signature"


def diff(reference: Side, candidate: Side, options: DiffOptions | None = None,
         progress: Progress = silent) -> DiffReport:
    """The candidate against the reference: structure, behaviour on the golden inputs, and the trigger search.

    Raises ``InputError``/``ModelError`` (exit 2) when a side cannot be read or the reference cannot run the
    golden inputs; a candidate that cannot run them is a finding."""
    options = options or DiffOptions()
    ref, cand = _subject(reference), _subject(candidate)
    ref_model, cand_model = onnxfile.parse(ref.model, ref.name), onnxfile.parse(cand.model, cand.name)
    progress(Event("diff", "structure", 0, 3))
    ref_graph, cand_graph = index(ref_model), index(cand_model)
    structure = structural.compare(ref_graph, cand_graph, cand.name, options)
    progress(Event("diff", "behaviour", 1, 3))
    runner_ref, runner_cand = behaviour.Runner(ref, ref_model), behaviour.Runner(cand, cand_model)
    batches, origin = _golden(ref, cand, options, lambda: behaviour.generate(ref_graph, options,
                                                                             options.vocab_size or ref.vocab_size))
    roles = dict(ref.roles) or dict(cand.roles)
    behaved, ref_out = behaviour.compare(runner_ref, runner_cand, batches, origin, roles, options, cand.name)
    notes: list[str] = []
    failed: list[Finding] = []
    search = None
    if not options.triggers:
        notes.append("the trigger search was not asked for")
    elif behaved.error is not None:
        notes.append("the candidate cannot run the golden inputs; the trigger search was not run")
    else:
        progress(Event("diff", "triggers", 2, 3))
        ids = next((n for n in runner_ref.inputs if n.endswith("input_ids")), None)
        vocab = options.vocab_size or ref.vocab_size or cand.vocab_size
        if ids is not None:
            # Never past either model's embedding: an id it has no row for is an error, not a trigger.
            rows = [r for r in (ref_graph.embedding_rows(ids), cand_graph.embedding_rows(ids)) if r]
            vocab = min([vocab, *rows] if vocab else rows, default=None)
        try:
            found = triggers.search(runner_ref, runner_cand, batches,
                                    behaviour.prediction_output(ref_out[0], roles), vocab, options, cand.name,
                                    progress)
        except triggers.CandidateFailed as e:
            failed.append(rules.BEHAVIOUR.finding(f"the candidate fails on inputs the reference runs (trigger "
                                                  f"search): {e}", cand.name, severity=rules.FLIPS.severity))
            found = "the trigger search stopped: the candidate failed"
        if isinstance(found, str):
            notes.append(found)
        else:
            search = found
    progress(Event("diff", "done", 3, 3, done=True))
    findings = [*structure.findings, *behaved.findings, *failed, *(search.findings if search else ())]
    findings.sort(key=lambda f: -f.severity)
    return DiffReport(ref.name, cand.name, (ref.kind, cand.kind), options.thresholds(), structure, behaved, search,
                      tuple(findings), tuple(notes))
