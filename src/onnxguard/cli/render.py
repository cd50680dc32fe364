"""How reports look in a terminal (rich). The library returns data; this module draws it."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from onnxguard.accuracy.parity import ParityReport
from onnxguard.errors import InputError, OnnxguardError, Remedy
from onnxguard.model.info import ModelInfo
from onnxguard.progress import Event

out = Console(highlight=False)
if not out.is_terminal:
    out = Console(highlight=False, width=120)  # piped or captured: wide enough for the report tables
err = Console(stderr=True, highlight=False)


# How the command line names each Remedy the library asks for: (what to do, the flag). The one place where a
# Remedy becomes a flag; a verb that has no such flag gets the error's hint alone.
REMEDY_FLAGS: dict[Remedy, tuple[str, str]] = {
    Remedy.IDENTITY: ("give", "--identity FILE (or set ONNXGUARD_AGE_IDENTITY)"),
    Remedy.PASSPHRASE: ("give", "--passphrase-env VAR"),
    Remedy.PUBLIC_KEY: ("give", "--public-key PEM (or --allow-unsigned to accept it unchecked)"),
    Remedy.ALLOW_UNSIGNED: ("pass", "--allow-unsigned"),
    Remedy.ALLOW_NOT_SCANNED: ("pass", "--allow-unscanned"),
    Remedy.OVERWRITE: ("pass", "--overwrite"),
    Remedy.TRUST_PICKLE: ("pass", "--trust-pickle"),
    Remedy.FORCE: ("pass", "--force"),
    Remedy.OUTPUT: ("choose another", "-o/--output"),
    Remedy.INPUT_SHAPES: ("give", "--input-shape [NAME=]D1,D2,..[:DTYPE] for each input"),
    Remedy.EXPORTER: ("try", "--exporter dynamo|torchscript"),
    Remedy.GOLDEN_INPUTS: ("give", "--golden inputs.npz"),
    Remedy.TASK: ("give", "--task"),
    Remedy.RECIPIENT: ("give", "--recipient age1... (or --recipients-file FILE, or --passphrase-env VAR)"),
    Remedy.PASSWORD: ("give", "--password-env VAR"),
}


def _option(command, flag: str):
    """The option of ``command`` spelled ``flag``, or None."""
    return next((p for p in command.params
                 if p.param_type_name == "option" and (flag in p.opts or flag in p.secondary_opts)), None)


def remedy_text(remedy: Remedy, command=None) -> str | None:
    """``give --identity FILE``: the flag of ``command`` for ``remedy``; None when the verb has no such flag. A verb
    that spells it otherwise (keygen's ``-o`` is ``--out``, not ``--output``) is named by its own long flag."""
    verb, flag = REMEDY_FLAGS[remedy]
    spelled, _, rest = flag.partition(" ")
    *short, long_flag = spelled.split("/")
    if command is None or _option(command, long_flag) is not None:
        return f"{verb} {flag}"
    own = next((o for o in (_option(command, s) for s in short) if o is not None), None)
    if own is None:
        return None
    return f"{verb} {max(own.opts, key=len)}" + (f" {rest}" if rest else "")


def error_line(e: OnnxguardError, command=None) -> str:
    """``onnxguard: error: MESSAGE; WHAT TO DO``: one line, the message first, then the hint and the flag of the
    verb that ran for the error's remedy (``choose another output, or pass --overwrite``); a verb without that
    flag gets the hint alone, or else the remedy in words."""
    flag = remedy_text(e.remedy, command) if e.remedy is not None else None
    tail = ", or ".join(part for part in (e.hint, flag) if part)
    tail = tail or (f"needs {e.remedy.value}" if e.remedy is not None else "")
    return one_line(f"onnxguard: error: {e.message}" + (f"; {tail}" if tail else ""))


def internal_error_line(e: BaseException) -> str:
    """A bug, not a usage problem: the exception's type and first line, and how to see the traceback."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return one_line(f"onnxguard: internal error: {type(e).__name__}: {first}; rerun with --debug for the traceback")


def usage_error_line(e) -> str:
    """Click's usage box (usage, hint, framed error) as one line: the error, then the verb's usage."""
    message = one_line(e.format_message()).rstrip(".")
    usage = ""
    if e.ctx is not None:
        usage = one_line(e.ctx.get_usage()).removeprefix("Usage: ")
    where = f"; usage: {usage} (--help for more)" if usage else ""
    return f"onnxguard: error: {message}{where}"


def one_line(text: str) -> str:
    """Collapse the line breaks of a multi-line message (an exception's text) into one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def write_report(text: str, output: Path | None) -> None:
    """A rendered report on stdout, or into ``output``."""
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise InputError(f"{output}: cannot write the report ({e.strerror}); choose a writable path") from e


def print_json(data: dict) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def shape(s) -> str:
    return "?" if s is None else escape("[" + ", ".join("?" if d is None else str(d) for d in s) + "]")


def model_info(info: ModelInfo) -> None:
    if info.bundle:
        b = info.bundle
        t = Table(title=f"bundle {b['name']} {b['version']}", show_header=False, title_justify="left")
        t.add_row("path", b["path"])
        t.add_row("created", b["created"])
        src = b["source"]
        t.add_row("source", f"{src['framework']} {src['framework_version']}: {src['identifier']}")
        t.add_row("task", str(b["task"]))
        t.add_row("exporter", src["exporter"])
        if b["labels"]:
            t.add_row("labels", ", ".join(b["labels"][:20]) + (" ..." if len(b["labels"]) > 20 else ""))
        t.add_row("steps", ", ".join(b["steps"]))
        t.add_row("parity", "n/a" if b["parity"] is None else ("passed" if b["parity"]["passed"] else "FAILED"))
        t.add_row("files", ", ".join(b["files"]))
        t.add_row("sealed / signed", f"{'yes' if b.get('sealed') else 'no'} / {'yes' if b.get('signed') else 'no'}")
        out.print(t)
    t = Table(title=f"model {info.path}", show_header=False, title_justify="left")
    t.add_row("file size", size(info.file_size))
    t.add_row("IR version", str(info.ir_version))
    t.add_row("opset", ", ".join(f"{d} {v}" for d, v in info.opset.items()))
    t.add_row("producer", info.producer or "-")
    if info.node_count is None:
        t.add_row("graph", "sealed: give --identity to decrypt it in memory and count nodes and parameters")
    else:
        t.add_row("parameters", f"{info.parameter_count:,}")
        t.add_row("nodes", str(info.node_count))
    for x in info.inputs:
        t.add_row("input", f"{x.name}: {x.dtype} {shape(x.shape)}")
    for x in info.outputs:
        t.add_row("output", f"{x.name}: {x.dtype} {shape(x.shape)}")
    for domain, ops in info.op_histogram.items():
        t.add_row(f"ops {domain}", ", ".join(f"{op} {n}" for op, n in ops.items()))
    for k, v in info.metadata.items():
        t.add_row(f"meta {k}", v)
    if info.external_data:
        t.add_row("external data", ", ".join(info.external_data))
    out.print(t)


def parity_report(report: ParityReport, title: str = "parity") -> None:
    t = Table(title=f"{title}: {'PASSED' if report.passed else 'FAILED'} ({report.items} examples, "
                    f"{report.batches} batches)", title_justify="left")
    for col in ("output", "role", "max |diff|", "mean |diff|", "min cosine", "label agreement", "result"):
        t.add_column(col, justify="left" if col in ("output", "role", "result") else "right")
    for o in report.outputs:
        t.add_row(o.name, o.role, f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}",
                  "-" if o.min_cosine is None else f"{o.min_cosine:.6f}",
                  "-" if o.label_agreement is None else f"{o.label_agreement:.2%}",
                  "[green]ok[/]" if o.passed else "[red]" + "; ".join(o.failures) + "[/]")
    out.print(t)
    tol = report.tolerance
    out.print(f"tolerance: |diff| <= {tol.atol:g} + {tol.rtol:g}*|ref|, cosine >= {tol.min_cosine}, "
              f"label agreement >= {tol.min_label_agreement:.0%}")
    for note in report.notes:
        out.print(f"note: {note}")


@contextmanager
def progress_display(enabled: bool = True):
    """A rich progress display on stderr; yields the callback the library calls."""
    if not enabled or not err.is_terminal:
        def plain(event: Event) -> None:
            if event.done and enabled and event.message:
                err.print(f"[bold]{event.stage}[/]: {escape(event.message)}")
        yield plain
        return
    columns = (SpinnerColumn(), TextColumn("[bold]{task.fields[stage]:<9}"), BarColumn(bar_width=24),
               MofNCompleteColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def callback(event: Event) -> None:
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.message, total=event.total, stage=event.stage)
            task = tasks[event.stage]
            if event.done:
                bar.update(task, description=event.message, total=event.total or 1, completed=event.total or 1)
            else:
                bar.update(task, description=event.message, total=event.total, completed=event.completed or 0)

        yield callback
