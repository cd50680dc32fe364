"""preprocess.tokenizer: the serving tokenizer (tokenizers library, from bytes) gives the ids the build-time
Transformers tokenizer gives: same texts, both padding sides, truncation, every model input."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from onnxguard.errors import InputError, ModelError
from onnxguard.preprocess import tokenizer

TEXTS = [
    "The movie was great fun",
    "a",
    "",
    "   ",
    "Terrible plot, AWFUL ending!!! but the music... was fine?",
    "unknownword zzz qqq the",
    "movies played runs",  # WordPiece continuations: movie ##s, play ##ed -> [UNK], run ##s
    "Café naïve résumé",  # accents: stripped by the BERT normaliser when lower-casing
    "the " * 300,  # longer than any max_length used here
    "日本語 text with 中文",  # CJK characters are split one by one
]


def _save_wordpiece(path: Path, **config) -> Path:
    """A WordPiece tokenizer made with the tokenizers library and saved by Transformers' PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from onnxguard.examples.text import VOCAB

    vocab = {t: i for i, t in enumerate([*VOCAB, "play", "##ed", "日", "本", "text"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = [("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=specials)
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]", **config)
    fast.save_pretrained(path)
    return path


def _files(path: Path, prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{p.name}": p.read_bytes() for p in path.iterdir() if p.is_file()}


def _reference(path: Path, texts, side: str, max_length: int, names) -> dict[str, np.ndarray]:
    """What Transformers gives, as the build's golden batches and the old calibration path used it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = side
    enc = tok(list(texts), truncation=True, max_length=max_length, padding="longest", return_tensors="np",
              return_token_type_ids=True)
    return {n: enc[n].astype(np.int64) for n in names}


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory) -> Path:
    return _save_wordpiece(tmp_path_factory.mktemp("wordpiece"), model_max_length=64)


@pytest.fixture(scope="module")
def bert_example(tmp_path_factory) -> Path:
    """The tokenizer the tiny text models of the examples (and the test suite) ship."""
    from onnxguard.examples.text import save_tokenizer

    path = tmp_path_factory.mktemp("bert-example")
    save_tokenizer(path)
    return path


NAMES = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [64, 7, 3])
def test_same_ids_as_transformers(wordpiece, side, max_length):
    tok = tokenizer.load(_files(wordpiece), {"kind": "tokenizer", "max_length": 64, "model_input_names": NAMES})
    ours = tok.encode(TEXTS, max_length=max_length, padding_side=side)
    ref = _reference(wordpiece, TEXTS, side, max_length, NAMES)
    assert list(ours) == NAMES
    for name in NAMES:
        assert ours[name].dtype == np.int64
        np.testing.assert_array_equal(ours[name], ref[name], err_msg=f"{name}, {side}, max_length {max_length}")
    assert ours["input_ids"].shape[1] == min(max_length, 64)  # the long text is cut, special tokens kept
    long_row = ours["input_ids"][8]
    assert long_row[0] == 2 and long_row[-1] == 3  # [CLS] first and [SEP] last: cut inside, specials kept


def test_the_examples_tokenizer_matches_and_knows_its_words(bert_example):
    pre = {"kind": "tokenizer", "path": "tokenizer", "max_length": 128, "padding_side": "right",
           "model_input_names": ["input_ids", "attention_mask"]}
    tok = tokenizer.load(_files(bert_example, "tokenizer/"), pre)
    ours = tok.encode(TEXTS)
    ref = _reference(bert_example, TEXTS, "right", 128, ["input_ids", "attention_mask"])
    assert sorted(ours) == ["attention_mask", "input_ids"]
    for name in ours:
        np.testing.assert_array_equal(ours[name], ref[name])
    unk = 1
    assert unk not in ours["input_ids"][0][1:-1]  # "the movie was great fun": every word is in the vocabulary


def test_settings_come_from_the_config_files_and_the_manifest_wins(tmp_path):
    path = _save_wordpiece(tmp_path / "left", model_max_length=16, padding_side="left", truncation_side="left")
    tok = tokenizer.load(_files(path))
    assert (tok.padding_side, tok.truncation_side, tok.max_length, tok.pad_token) == ("left", "left", 16, "[PAD]")
    ours = tok.encode(TEXTS)
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(path)(TEXTS, truncation=True, padding="longest", return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"])  # left-truncated and left-padded alike
    assert tokenizer.load(_files(path), {"kind": "tokenizer", "padding_side": "right", "max_length": 8}).max_length == 8


def test_pad_token_from_special_tokens_map_and_none_at_all(wordpiece):
    files = _files(wordpiece)
    config = json.loads(files["tokenizer_config.json"])
    pad = config.pop("pad_token")
    files["tokenizer_config.json"] = json.dumps(config).encode()
    files["special_tokens_map.json"] = json.dumps({"pad_token": {"content": "[MASK]"}}).encode()
    assert tokenizer.load(files).pad_id == 4
    del files["special_tokens_map.json"]
    tok = tokenizer.load(files)
    assert tok.pad_token is None and tok.pad_id == 0  # padded positions hold 0, masked, as the golden set's batches
    assert pad == "[PAD]"


def test_reads_no_disk_only_the_bytes_it_is_given(tmp_path):
    path = _save_wordpiece(tmp_path / "gone", model_max_length=64)
    files = _files(path)
    for p in path.iterdir():
        p.unlink()
    path.rmdir()
    assert tokenizer.load(files).encode(["the movie"])["input_ids"].tolist() == [[2, 5, 87, 3]]


def test_errors_are_one_line_and_name_the_file(wordpiece):
    files = _files(wordpiece, "tokenizer/")
    pre = {"kind": "tokenizer", "path": "tokenizer"}
    with pytest.raises(ModelError, match=r"^tokenizer/tokenizer.json: missing"):
        tokenizer.load({k: v for k, v in files.items() if not k.endswith("tokenizer.json")}, pre)
    with pytest.raises(ModelError, match=r"^tokenizer/tokenizer.json: not a tokenizer the tokenizers library can load"):
        tokenizer.load({**files, "tokenizer/tokenizer.json": b'{"version": "1.0", "model": 3}'}, pre)
    with pytest.raises(ModelError, match=r"^tokenizer/tokenizer_config.json: not a readable JSON file"):
        tokenizer.load({**files, "tokenizer/tokenizer_config.json": b"\xff\xfe"}, pre)
    bad_pad = json.dumps({"pad_token": "<pad>"}).encode()
    with pytest.raises(ModelError, match=r"pad token '<pad>' is not in the vocabulary"):
        tokenizer.load({**files, "tokenizer/tokenizer_config.json": bad_pad}, pre)
    with pytest.raises(ModelError, match=r"takes \['pixel_values'\], which a tokenizer does not produce"):
        tokenizer.load(files, pre, input_names=["input_ids", "pixel_values"])
    with pytest.raises(ModelError, match="not a tokenizer"):
        tokenizer.load(files, {"kind": "image"})


def test_bad_calls_are_input_errors(wordpiece):
    tok = tokenizer.load(_files(wordpiece))
    for texts, message in (("a text", "a list of strings, not str"), ([], "no texts"), (["ok", 3], "text 1 is a int")):
        with pytest.raises(InputError, match=message):
            tok.encode(texts)
    with pytest.raises(InputError, match="longer than the model takes"):
        tok.encode(["a"], max_length=65)
    with pytest.raises(InputError, match="positive integer"):
        tok.encode(["a"], max_length=0)
    with pytest.raises(InputError, match="padding side 'middle'"):
        tok.encode(["a"], padding_side="middle")


def test_threads_share_one_tokenizer(wordpiece):
    tok = tokenizer.load(_files(wordpiece), {"kind": "tokenizer", "model_input_names": NAMES})
    cases = [(side, length) for side in ("right", "left") for length in (3, 5, 7, 9, 11, 13, 64)]
    expected = {c: tok.encode(TEXTS, max_length=c[1], padding_side=c[0]) for c in cases}
    failures = []

    def work(offset: int) -> None:
        for i in range(40):
            side, length = cases[(i + offset) % len(cases)]
            got = tok.encode(TEXTS, max_length=length, padding_side=side)
            if any(not np.array_equal(got[n], expected[side, length][n]) for n in NAMES):
                failures.append((side, length))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_importing_it_loads_no_transformers_or_torch():
    code = ("import sys, onnxguard.preprocess.tokenizer, onnxguard.preprocess.image, onnxguard.preprocess.table\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'sklearn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
