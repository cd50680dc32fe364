"""The task of a Transformers model, read from its saved architecture (``config.json``'s ``architectures[0]``),
without torch or Transformers.

:mod:`onnxguard.convert.hf` resolves the task with :func:`resolve` in the conversion process. :func:`refuse_early`
lets the build process refuse what that would refuse before it starts the conversion process, whose first work is
importing torch and Transformers: a head no task keeps, a task that contradicts the saved head, or a config that
names no architecture cost 10-14 s to refuse on a 2-core host that way, and a fraction of a second here.
"""

from __future__ import annotations

import json
from pathlib import Path

from onnxguard.bundle import files
from onnxguard.convert.interface import ConversionError
from onnxguard.errors import InputError, Remedy

TASKS = ("text-classification", "token-classification", "question-answering", "image-classification",
         "feature-extraction")
# The end of an architecture's class name, and the task that keeps its head.
SUFFIX_TASKS = {"ForSequenceClassification": "text-classification",
                "ForTokenClassification": "token-classification",
                "ForQuestionAnswering": "question-answering", "ForImageClassification": "image-classification"}
# Heads no task here keeps, by the end of their class name: what a build would silently drop.
UNSUPPORTED_HEADS = (
    ("ForCausalLM", "causal language modelling"),
    ("LMHeadModel", "language modelling"),
    ("ForMaskedLM", "masked language modelling"),
    ("ForMultipleChoice", "multiple choice"),
    ("ForConditionalGeneration", "sequence-to-sequence generation"),
    ("ForPreTraining", "pre-training"),
    ("ForNextSentencePrediction", "next sentence prediction"),
)
# A config.json is kilobytes (a label map of tens of thousands of classes, about a megabyte); a larger one is not
# read here, and the conversion process reports on it.
MAX_CONFIG_BYTES = 16 << 20


def native_task(arch: str, bare: bool) -> str | None:
    """The task that keeps the head of the architecture ``arch``, or None when no task does. ``bare``: ``arch``
    is the model type's bare encoder class (what Transformers' ``AutoModel`` makes of its config)."""
    task = next((t for suffix, t in SUFFIX_TASKS.items() if arch.endswith(suffix)), None)
    if task is not None:
        return task
    if any(arch.endswith(suffix) for suffix, _ in UNSUPPORTED_HEADS):
        return None
    return "feature-extraction" if bare else None


def resolve(spec: str, arch: str | None, requested: str | None, bare: bool) -> tuple[str, str | None]:
    """The task to build and, where an explicit ``--task feature-extraction`` leaves a head out, a note saying so.

    The task is the saved architecture's (see :mod:`onnxguard.convert.hf`); the bare encoder gives pooled
    embeddings. Any other head is refused by name rather than dropped without a word."""
    if requested is not None and requested not in TASKS:
        raise ConversionError(f"{spec}: task {requested!r} is not supported (only {', '.join(TASKS)})",
                              remedy=Remedy.TASK)
    if arch is None:
        if requested is None:
            raise ConversionError(f"{spec}: config.json names no architecture, so its task cannot be read from it",
                                  hint=f"name the task ({', '.join(TASKS)})", remedy=Remedy.TASK)
        return requested, None
    native = native_task(arch, bare)
    if requested is None or requested == native:
        if native is None:
            what = next((what for suffix, what in UNSUPPORTED_HEADS if arch.endswith(suffix)), None)
            if what is None:
                raise ConversionError(f"{spec}: {arch}: this architecture is not supported yet (supported: "
                                      f"*{', *'.join(SUFFIX_TASKS)} and bare *Model text encoders)")
            raise ConversionError(f"{spec}: {arch}: {what} is not supported yet; the build would drop its head")
        return native, None
    if requested == "feature-extraction" and native != "image-classification":
        # asked for by name: the encoder's embeddings, its head left out
        return requested, f"{arch}'s head is left out: the task feature-extraction, asked for, builds the encoder's " \
            "embeddings"
    raise ConversionError(f"{spec}: the task {requested} contradicts the saved {arch}, which has no "
                          f"{requested} head (its head would be random weights)",
                          hint="name no task, to build the one the model was saved for")


def architecture(archs: object) -> str | None:
    """The first of a config's ``architectures``, or None where it names none."""
    return str(archs[0]) if isinstance(archs, list | tuple) and archs else None


def refuse_early(spec: str, requested: str | None) -> None:
    """Raise the ``ConversionError`` that :func:`resolve` raises in the conversion process for the local model
    directory ``spec``, where that does not depend on what only Transformers knows (whether the architecture is a
    bare encoder); return otherwise, and for a hub id or a config.json this cannot read (the conversion process
    then reports on it in Transformers' words)."""
    path = Path(spec) / "config.json"
    if not path.is_file():
        return
    try:
        config = json.loads(files.read_regular(path, MAX_CONFIG_BYTES, what="config.json").data)
    except (InputError, ValueError, RecursionError):  # RecursionError: JSON nested past the parser's depth
        return
    if not isinstance(config, dict):
        return
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        return  # not what Transformers saves: the conversion process reads it its own way
    arch = architecture(archs)
    refusals = []
    for bare in (False, True):
        try:
            resolve(spec, arch, requested, bare)
        except ConversionError as e:
            refusals.append(e)
    if len(refusals) == 2 and str(refusals[0]) == str(refusals[1]):
        raise refusals[0]
