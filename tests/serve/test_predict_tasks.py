"""``:predict`` by task on a real server: a token classifier answers a label per word-piece, question answering the
best span of each context, both as the Transformers model they were built from; the self-check at start-up takes
their per-token outputs."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from serve_support import free_port, make_keys, start

import cli_runner

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

LABELS = {0: "O", 1: "B-PER", 2: "I-PER"}


def _bert(kind: str, path):
    import torch
    import transformers

    from onnxguard.convert.hf import no_progress_bars
    from onnxguard.examples.text import VOCAB, save_tokenizer

    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64,
                                     **({"id2label": LABELS} if kind == "token" else {}))
    model = (transformers.BertForTokenClassification(config) if kind == "token"
             else transformers.BertForQuestionAnswering(config))
    with no_progress_bars():
        model.eval().save_pretrained(path)
    save_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def task_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    for kind in ("token", "qa"):
        r = cli_runner.run("build", _bert(kind, root / f"{kind}-src"), "-o", root / kind, "--optimize", "none")
        assert r.code == 0, str(r)
    keys = make_keys(root / "keys.db")
    port = free_port()
    proc = start([f"token={root / 'token'}", f"qa={root / 'qa'}", "--allow-unsigned", "--keys", str(root / "keys.db"),
                  "--audit", str(root / "audit.db")], port, root / "server.log")
    try:
        yield {"url": f"http://127.0.0.1:{port}", "keys": keys, "root": root}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _post(server, model: str, instances, key: str = "full") -> httpx.Response:
    return httpx.post(f"{server['url']}/v1/models/{model}:predict", json={"instances": instances},
                      headers={"Authorization": f"Bearer {server['keys'][key]}"}, timeout=60)


def _source(server, kind: str):
    import transformers

    src = server["root"] / f"{kind}-src"
    auto = (transformers.AutoModelForTokenClassification if kind == "token"
            else transformers.AutoModelForQuestionAnswering)
    return transformers.AutoTokenizer.from_pretrained(src), auto.from_pretrained(src).eval()


def test_token_classification_answers_a_label_per_word_piece_as_transformers(task_server):
    import torch

    texts = ["a fine movie", "the plot was dull and the acting was slow"]
    r = _post(task_server, "token", texts)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    tokenizer, model = _source(task_server, "token")
    for text, pred in zip(texts, preds, strict=True):
        enc = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**enc).logits[0].numpy()
        words = enc.word_ids()
        expected = [LABELS[int(logits[j].argmax())] for j in range(len(words)) if words[j] is not None]
        assert [t["label"] for t in pred["tokens"]] == expected
        assert pred["text"] == text
        assert all(text[t["start"]:t["end"]] for t in pred["tokens"])
        assert all(0 < t["score"] <= 1 for t in pred["tokens"])
    r = _post(task_server, "token", texts[:1], key="label")
    assert r.status_code == 200 and all(set(t) == {"token", "start", "end", "label"}
                                        for t in r.json()["predictions"][0]["tokens"])


def test_the_v2_label_policy_gives_a_class_per_token(task_server):
    tokenizer, _ = _source(task_server, "token")
    enc = tokenizer(["a fine movie"], return_tensors="np")
    body = {"inputs": [{"name": n, "datatype": "INT64", "shape": list(enc[n].shape), "data": enc[n].ravel().tolist()}
                       for n in ("input_ids", "attention_mask", "token_type_ids")]}
    r = httpx.post(f"{task_server['url']}/v2/models/token/infer", json=body, timeout=60,
                   headers={"Authorization": f"Bearer {task_server['keys']['label']}"})
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "logits.label" and out["shape"] == list(enc["input_ids"].shape)


def test_question_answering_answers_the_best_span_as_transformers(task_server):
    import torch

    pairs = [{"question": "who was slow", "context": "the plot was dull and the acting was slow"},
             {"question": "what was fine", "context": "a fine movie with a good story"}]
    r = _post(task_server, "qa", pairs)
    assert r.status_code == 200, r.text
    tokenizer, model = _source(task_server, "qa")
    for pair, pred in zip(pairs, r.json()["predictions"], strict=True):
        enc = tokenizer(pair["question"], pair["context"], return_tensors="pt", return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")[0].tolist()
        with torch.inference_mode():
            out = model(**enc)
        start = torch.softmax(out.start_logits[0], -1).numpy()
        end = torch.softmax(out.end_logits[0], -1).numpy()
        context = np.array([s == 1 for s in enc.sequence_ids(0)])
        best = max((start[s] * end[t], s, t) for s in np.flatnonzero(context) for t in np.flatnonzero(context)
                    if s <= t < s + 30)
        _, s, t = best
        assert pred["answer"] == pair["context"][offsets[s][0]:offsets[t][1]]
        assert (pred["start"], pred["end"]) == (offsets[s][0], offsets[t][1])
        assert pred["score"] == pytest.approx(best[0], rel=1e-3)
    r = _post(task_server, "qa", [["what was fine", "a fine movie"]])
    assert r.status_code == 200 and r.json()["predictions"][0]["answer"] in "a fine movie"


@pytest.mark.parametrize("instance", ["just a text", {"question": "q"}, ["q", 1]])
def test_question_answering_needs_question_and_context(task_server, instance):
    r = _post(task_server, "qa", [instance])
    assert r.status_code == 400 and "question" in r.json()["error"]
