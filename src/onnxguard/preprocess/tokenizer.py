"""``tokenizer.load(files, preprocessing) -> TextTokenizer``: the bundle's tokenizer at serving time.

The bundle ships the tokenizer Transformers saved at build time (``tokenizer/tokenizer.json`` and
``tokenizer_config.json``, sometimes ``special_tokens_map.json``). This module reads those files' CONTENTS,
handed over as bytes by whoever read and hashed them, through the ``tokenizers`` library (no transformers, no
torch), with the settings Transformers would apply: pad token, padding and truncation side, the longest
sequence. ``encode`` gives exactly the model's inputs, int64, padded to the longest text of the call, as
``tokenizer(texts, truncation=True, max_length=..., padding="longest")`` does at build time.

A ``TextTokenizer`` is safe to share between threads: the ``tokenizers`` object it encodes with is never changed
after it is made (one per maximum length, made once).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from onnxguard.errors import InputError, ModelError

TOKENIZER_JSON = "tokenizer.json"
CONFIG_JSON = "tokenizer_config.json"
SPECIAL_TOKENS_JSON = "special_tokens_map.json"
# The inputs a tokenizer can produce, under the names Transformers gives them.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
SIDES = ("right", "left")
# Transformers' "no limit" model_max_length is a huge integer (int(1e30)); anything past this is no limit.
NO_LIMIT = 1_000_000
# Distinct maximum lengths a tokenizer keeps a configured copy for.
CACHED_LENGTHS = 8


def _special(value) -> str | None:
    """A special token as the config files write it: ``"[PAD]"`` or ``{"content": "[PAD]", ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class TextTokenizer:
    """Texts -> the model's token inputs. Build with :func:`load`."""

    def __init__(self, spec: str, *, input_names: Sequence[str], max_length: int | None, padding_side: str,
                 truncation_side: str, pad_token: str | None, pad_id: int, name: str = TOKENIZER_JSON) -> None:
        self._spec = spec
        self._base = Tokenizer.from_str(spec)
        self._base.no_padding()
        self._base.no_truncation()
        self.input_names = tuple(input_names)
        self.max_length = max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.pad_token = pad_token
        self.pad_id = pad_id
        self.name = name
        self._lock = threading.Lock()
        self._truncating: dict[int, Tokenizer] = {}

    def __repr__(self) -> str:
        return (f"TextTokenizer({self.name}, inputs={list(self.input_names)}, max_length={self.max_length}, "
                f"padding_side={self.padding_side!r})")

    def _tokenizer(self, max_length: int | None) -> Tokenizer:
        """A tokenizer that truncates to ``max_length`` (special tokens kept), made once and never changed after."""
        if max_length is None:
            return self._base
        with self._lock:
            tok = self._truncating.get(max_length)
            if tok is None:
                tok = Tokenizer.from_str(self._spec)
                tok.no_padding()
                tok.enable_truncation(max_length, stride=0, strategy="longest_first", direction=self.truncation_side)
                if len(self._truncating) >= CACHED_LENGTHS:
                    self._truncating.pop(next(iter(self._truncating)))
                self._truncating[max_length] = tok
        return tok

    @property
    def vocab_size(self) -> int:
        """Token ids lie in ``[0, vocab_size)`` (added tokens included)."""
        return int(self._base.get_vocab_size(with_added_tokens=True))

    def encode(self, texts: Sequence[str], max_length: int | None = None,
               padding_side: str | None = None) -> dict[str, np.ndarray]:
        """The model's inputs for ``texts``: int64 arrays of shape (texts, longest), padded on ``padding_side``
        (default: the tokenizer's), each text cut to ``max_length`` tokens (default and upper bound: the model's)."""
        return self.encode_full(texts, max_length, padding_side)[0]

    def encode_full(self, texts: Sequence[str] | Sequence[tuple[str, str]], max_length: int | None = None,
                    padding_side: str | None = None) -> tuple[dict[str, np.ndarray], list[Encoding]]:
        """As :meth:`encode`, with each text's ``tokenizers.Encoding`` (tokens, character offsets, sequence ids).
        A text may be a ``(first, second)`` pair (a question and its context), tokenized as pairs are: segment ids
        0 then 1, truncation from the longest of the two."""
        if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
            raise InputError(f"texts must be a list of strings, not {type(texts).__name__}")
        if not texts:
            raise InputError("no texts to tokenize")
        bad = next((i for i, t in enumerate(texts) if not _is_text(t)), None)
        if bad is not None:
            raise InputError(f"text {bad} is a {type(texts[bad]).__name__}, not a string or a pair of strings")
        side = padding_side or self.padding_side
        if side not in SIDES:
            raise InputError(f"padding side {side!r}: use {' or '.join(SIDES)}")
        if max_length is None:
            max_length = self.max_length
        elif not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise InputError(f"max_length {max_length!r}: expected a positive integer")
        elif self.max_length is not None and max_length > self.max_length:
            raise InputError(f"max_length {max_length} is longer than the model takes ({self.max_length} tokens)")
        batch = [t if isinstance(t, str) else (t[0], t[1]) for t in texts]
        encodings = self._tokenizer(max_length).encode_batch(batch, add_special_tokens=True)
        longest = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), longest), self.pad_id, np.int64)
        mask = np.zeros((len(encodings), longest), np.int64)
        types = np.zeros((len(encodings), longest), np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            cols = slice(0, n) if side == "right" else slice(longest - n, longest)
            ids[row, cols], mask[row, cols], types[row, cols] = e.ids, e.attention_mask, e.type_ids
        made = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: made[name] for name in self.input_names}, encodings


def _is_text(t: object) -> bool:
    return isinstance(t, str) or (isinstance(t, tuple | list) and len(t) == 2 and all(isinstance(x, str) for x in t))


def _text(files: Mapping[str, bytes], name: str, required: bool) -> str | None:
    data = files.get(name)
    if data is None:
        if required:
            raise ModelError(f"{name}: missing; the bundle's tokenizer needs it",
                             hint="rebuild the bundle from a model directory that has a fast tokenizer")
        return None
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelError(f"{name}: not a readable JSON file ({e})", hint="rebuild the bundle") from e


def _object(files: Mapping[str, bytes], name: str) -> dict:
    """An optional JSON object file; absent or not an object: empty."""
    text = _text(files, name, required=False)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ModelError(f"{name}: not a readable JSON file ({e})", hint="rebuild the bundle") from e
    return value if isinstance(value, dict) else {}


def load(files: Mapping[str, bytes], preprocessing: Mapping | None = None, *,
         input_names: Sequence[str] | None = None) -> TextTokenizer:
    """The tokenizer of a bundle from the CONTENTS of its files.

    ``files`` maps names to bytes: bundle names (``tokenizer/tokenizer.json``, under ``preprocessing["path"]``)
    or names inside the tokenizer directory (``tokenizer.json``). ``preprocessing`` is the manifest's entry
    (``max_length``, ``padding_side``, ``model_input_names``); ``input_names``, when given, are the model's inputs
    and win over it.
    """
    pre = dict(preprocessing or {})
    if pre.get("kind", "tokenizer") != "tokenizer":
        raise ModelError(f"the manifest's preprocessing is {pre.get('kind')!r}, not a tokenizer")
    folder = str(pre.get("path") or "").strip("/")

    def named(base: str) -> str:
        full = f"{folder}/{base}" if folder else base
        return full if full in files or base not in files else base

    spec_name, config_name = named(TOKENIZER_JSON), named(CONFIG_JSON)
    spec = _text(files, spec_name, required=True) or ""
    config, specials = _object(files, config_name), _object(files, named(SPECIAL_TOKENS_JSON))

    names = list(input_names or pre.get("model_input_names") or config.get("model_input_names")
                 or ("input_ids", "attention_mask"))
    unknown = [n for n in names if n not in INPUT_NAMES]
    if unknown:
        raise ModelError(f"{spec_name}: the model takes {unknown}, which a tokenizer does not produce "
                         f"(it gives {', '.join(INPUT_NAMES)})")
    limits = [v for v in (pre.get("max_length"), config.get("model_max_length"))
              if isinstance(v, int) and not isinstance(v, bool) and 0 < v < NO_LIMIT]
    max_length = min(limits) if limits else None
    padding_side = pre.get("padding_side") or config.get("padding_side") or "right"
    truncation_side = config.get("truncation_side") or "right"
    for what, side in (("padding", padding_side), ("truncation", truncation_side)):
        if side not in SIDES:
            raise ModelError(f"{config_name}: {what} side {side!r} is neither {' nor '.join(SIDES)}")
    try:
        tokenizer = TextTokenizer(spec, input_names=names, max_length=max_length, padding_side=padding_side,
                                  truncation_side=truncation_side, pad_token=None, pad_id=0, name=spec_name)
    # tokenizers raises a bare Exception for a tokenizer.json it cannot build a tokenizer from.
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{spec_name}: not a tokenizer the tokenizers library can load ({str(e).splitlines()[0]})",
                         hint="rebuild the bundle from a model directory that has a fast tokenizer") from e
    pad = _special(config.get("pad_token")) or _special(specials.get("pad_token"))
    if pad is not None:
        pad_id = tokenizer._base.token_to_id(pad)
        if pad_id is None:
            raise ModelError(f"{config_name}: pad token {pad!r} is not in the vocabulary of {spec_name}")
        tokenizer.pad_token, tokenizer.pad_id = pad, pad_id
    # No pad token: padded positions hold id 0, masked out, as the golden set's batches were made at build time.
    return tokenizer
