"""Serving-time preprocessing, described by the bundle manifest's ``preprocessing`` entry; torch-free.

* :mod:`~onnxguard.preprocess.tokenizer`: texts -> ``input_ids`` / ``attention_mask`` / ``token_type_ids`` with the
  bundle's own tokenizer, through the ``tokenizers`` library (``"kind": "tokenizer"``).
* :mod:`~onnxguard.preprocess.image`: images -> float32 NCHW, scaled and normalised (``"kind": "image"``).
* :mod:`~onnxguard.preprocess.table`: rows -> float32 2-D, column count checked (``"kind": "table"``).

Each takes what the bundle door hands on (file contents as bytes, the manifest's dict) and never reads the disk.
"""
