"""The LitServe anchor of benchmark E: the same ONNX model and tokenizer behind LitServe's dynamic batching.

Run by benchmarks/server.py with the anchors' own interpreter (``make bench-anchors`` makes .venv-anchors from
benchmarks/anchors/requirements.lock; LitServe is not in onnxguard's lock):

    .venv-anchors/bin/python benchmarks/anchors/litserve_app.py BUNDLE_DIR --port PORT

It serves ``POST /v1/models/text:predict`` with ``{"instances": [TEXT, ...]}`` as onnxguard does, batching up to 32
requests with a 2 ms window (MEASURED.md E's settings), tokenizing with the bundle's tokenizer.json (truncated to
its max length, padded to the longest text of the batch) and running the bundle's model.onnx with ONNX Runtime's
default session settings (as onnxguard serve does by default). No key, no validation, no audit: the anchor is
the speed to beat, not a secure server.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import litserve as ls
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class TextClassifier(ls.LitAPI):
    def __init__(self, bundle: Path, **kw) -> None:
        super().__init__(**kw)
        self.bundle = bundle

    def setup(self, device) -> None:
        manifest = json.loads((self.bundle / "manifest.json").read_text())
        pre = manifest["preprocessing"]
        self.tokenizer = Tokenizer.from_file(str(self.bundle / pre["path"] / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(pre["max_length"])
        self.names = pre["model_input_names"]
        self.labels = manifest.get("labels") or []
        self.session = ort.InferenceSession(str(self.bundle / "model.onnx"), providers=["CPUExecutionProvider"])

    def decode_request(self, request):
        return request["instances"][0]

    def predict(self, texts):
        encoded = self.tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encoded)
        ids = np.zeros((len(encoded), width), np.int64)
        mask = np.zeros((len(encoded), width), np.int64)
        for i, e in enumerate(encoded):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        logits = self.session.run(None, {n: feed[n] for n in self.names})[0]
        return [int(i) for i in logits.argmax(-1)]

    def encode_response(self, output):
        return {"predictions": [{"label": self.labels[output] if self.labels else str(output)}]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    api = TextClassifier(args.bundle, max_batch_size=32, batch_timeout=0.002, api_path="/v1/models/text:predict")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False,
               num_api_servers=1)


if __name__ == "__main__":
    main()
