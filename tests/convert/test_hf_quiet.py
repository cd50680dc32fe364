"""One line means one line: Transformers' load reports and warnings are captured while a model loads, exports and
runs; a failure is the tool's one line on stderr, and ``--debug`` shows the captured report under the traceback."""

from __future__ import annotations

import json
import logging
import threading
import warnings
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def lacking_weights(tmp_path_factory) -> Path:
    """A token classifier whose config asks for a layer more than its checkpoint holds: Transformers loads it with
    random weights and logs a LOAD REPORT of every missing tensor."""
    import torch
    import transformers

    from onnxguard.convert.hf import no_progress_bars
    from onnxguard.examples.text import VOCAB, save_tokenizer

    path = tmp_path_factory.mktemp("lacking") / "model"
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    with no_progress_bars():
        transformers.BertForTokenClassification(config).save_pretrained(path)
    save_tokenizer(path)
    saved = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**saved, "num_hidden_layers": 2}))
    return path


@pytest.mark.slow  # a real process: torch and Transformers imported afresh
def test_a_failure_is_the_tools_one_line_and_debug_shows_the_captured_report(lacking_weights, cli, tmp_path):
    out = tmp_path / "bundle"
    r = cli("build", lacking_weights, "-o", out, process=True)  # the real console script: nothing else may print
    assert r.code == 2, str(r)
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("onnxguard: error: "), str(r)
    assert "the saved weights lack 16 tensor(s) of BertForTokenClassification" in r.err_lines[0]
    assert not out.exists()
    r = cli("--debug", "build", lacking_weights, "-o", out)
    assert r.code == 2, str(r)
    assert r.err_lines[-1].startswith("onnxguard: error: ") and "the saved weights lack" in r.err_lines[-1]
    assert "BertForTokenClassification LOAD REPORT" in r.err and "| MISSING" in r.err, str(r)
    assert "\x1b[" not in r.err  # the report's terminal colours are stripped


@pytest.mark.filterwarnings("default::UserWarning")  # shown, not raised as errors (the suite's default)
def test_captured_keeps_each_threads_records_and_puts_transformers_handler_back(capfd, recwarn):
    """Two conversions in threads each get their own records and warnings; a thread outside still logs to stderr and
    its warning is shown as before; the last one out restores Transformers' own handler and Python's display."""
    from transformers.utils import logging as hf_logging

    from onnxguard.convert import hf

    logger = hf_logging.get_logger("transformers.onnxguard_test")
    library = logging.getLogger("transformers")
    hf_logging.get_verbosity()  # Transformers installs its handler on first use
    before, shown, bars = set(library.handlers), warnings.showwarning, hf_logging.is_progress_bar_enabled()
    both_inside, logged = threading.Barrier(3), threading.Barrier(3)
    kept: dict[str, list[str]] = {}

    def convert(name: str) -> None:
        with hf.captured() as lines, hf.no_progress_bars():
            both_inside.wait()
            assert not hf_logging.is_progress_bar_enabled()
            logger.warning("report of %s", name)
            warnings.warn(f"warned in {name}", UserWarning, stacklevel=1)
            logged.wait()
        kept[name] = lines

    def outside() -> None:
        both_inside.wait()
        logger.warning("a record of no conversion")
        warnings.warn("a warning of no conversion", UserWarning, stacklevel=1)
        logged.wait()

    threads = [threading.Thread(target=convert, args=(n,)) for n in ("a", "b")] + [threading.Thread(target=outside)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kept == {n: [f"transformers warning: report of {n}", f"UserWarning: warned in {n}"] for n in "ab"}
    assert set(library.handlers) == before and len(library.handlers) == len(before)
    assert warnings.showwarning is shown and hf_logging.is_progress_bar_enabled() == bars
    err = capfd.readouterr().err
    assert "[transformers] a record of no conversion" in err and "report of" not in err
    assert [str(w.message) for w in recwarn] == ["a warning of no conversion"]  # shown where it would have been
