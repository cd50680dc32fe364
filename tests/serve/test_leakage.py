"""The timing side channel (``onnxguard leakage``): the analysis on known data, and deadline padding closing a
channel that is open by construction on a real server on 127.0.0.1.

The served digits model takes the same time for every input, so a channel is made: the inputs of one label are
sent with a 2 MB unused field in their body (the server receives and parses it, the model never sees it), like a
model whose work grows with its input. Without padding, latency then tells that label apart; the padded key
(deadline 300 ms) must answer every request no earlier than its deadline and leave the label unguessable from
latency. The only timing assertion is that padded latencies are at least the deadline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import cli_runner
from onnxguard.bundle import golden
from onnxguard.errors import InputError
from onnxguard.speed import leakage

DEADLINE_MS = 300  # the "padded" key of tests/serve/serve_support.make_keys


def _labels(values) -> list[str]:
    return [str(v) for v in values]


def test_analysis_finds_a_channel_where_latency_follows_the_label():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    t = 5 + 2.0 * y + rng.gamma(2, 0.4, 300)  # each label 2 ms apart, jitter below that
    a = leakage.analyze(t, _labels(y))
    assert a.leaks and a.mi_p_value < leakage.ALPHA
    assert a.accuracy > a.chance + 0.4 and a.accuracy_p_value < 0.05
    assert a.mutual_information_bits > 5 * a.mi_chance_bits
    assert a.mutual_information_bits <= a.label_entropy_bits + 1e-9
    assert [c.label for c in a.classes] == ["0", "1", "2"] and sum(c.count for c in a.classes) == 300
    assert a.classes[0].median_ms < a.classes[1].median_ms < a.classes[2].median_ms


def test_analysis_finds_nothing_where_latency_is_independent():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    t = 300 + rng.gamma(2, 0.5, 400)
    a = leakage.analyze(t, _labels(y))
    assert a.accuracy < a.chance + 0.1 and a.mi_p_value > 0.01 and not a.leaks
    assert a.mutual_information_bits < 0.05
    json.dumps(a.to_dict())


def test_analysis_refuses_what_it_cannot_analyse():
    with pytest.raises(InputError, match="every answer carried the label"):
        leakage.analyze([1.0] * 20, ["a"] * 20)
    with pytest.raises(InputError, match="too few"):
        leakage.analyze([1.0, 2.0], ["a", "b"])
    with pytest.raises(InputError, match="one latency per label"):
        leakage.analyze([1.0] * 20, ["a", "b"] * 5)


def _open_channel(server) -> tuple[list[dict], list[str]]:
    """Rows of two labels from the digits golden set; the first label's requests carry 2 MB of padding."""
    g = golden.load(server.bundles["digits"] / "golden.npz")
    x = np.concatenate([b["input"] for b in g.inputs])
    y = np.concatenate([b["label"] for b in g.references])
    a, b = 3, 8  # 8 and 7 rows of the golden set
    bodies, want = [], []
    for row, label in zip(x, y, strict=True):
        if label in (a, b):
            body = {"instances": [row.tolist()]}
            if label == a:
                body["padding"] = "x" * (2 << 20)
            bodies.append(body)
            want.append(str(label))
    return bodies, want


def test_deadline_padding_closes_the_channel(server):
    bodies, want = _open_channel(server)
    assert set(want) == {"3", "8"}
    n = 60
    padded = leakage.measure(server.url, "digits", bodies, headers=server.headers("padded"), n=n, warmup=2,
                             endpoint="predict")
    a = padded.analysis
    assert a.n == n == len(padded.latencies_ms) == len(padded.labels)
    assert set(padded.labels) == {"3", "8"}  # the labels the golden set promises, returned by the server
    assert min(padded.latencies_ms) >= DEADLINE_MS
    # Without padding this channel is wide open (the 2 MB bodies take longer); padded, latency must not tell the
    # labels apart: accuracy at chance, within what 60 samples allow (over 1000 simulated runs of independent
    # latency the largest excess over chance was 0.23).
    open_ = leakage.measure(server.url, "digits", bodies, headers=server.headers(), n=n, warmup=2,
                            endpoint="predict")
    assert a.accuracy <= a.chance + 0.3, (a, open_.analysis)
    assert open_.analysis.n == n and set(open_.labels) == {"3", "8"}


def test_leakage_command(server, tmp_path):
    plot = tmp_path / "leak.png"
    env = {"OG_TEST_KEY": server.keys["full"]}
    r = cli_runner.run("leakage", server.url, "--model", "digits", "--key-env", "OG_TEST_KEY", "--inputs",
                       server.bundles["digits"] / "golden.npz", "--n", "40", "--plot", plot, "--json", env=env)
    assert r.code == 0, str(r)
    d = json.loads(r.out)
    assert d["n"] == 40 and len(d["latencies_ms"]) == len(d["labels"]) == 40 and d["endpoint"] == "predict"
    assert len(d["classes"]) >= 2 and 0 <= d["accuracy"] <= 1 and 0 < d["chance"] <= 1
    assert plot.read_bytes()[:4] == b"\x89PNG"
    r = cli_runner.run("leakage", server.url, "--model", "digits", "--key-env", "OG_TEST_KEY", "--inputs",
                       server.bundles["digits"] / "golden.npz", "--n", "20", env=env)
    assert r.code == 0, str(r)
    assert "mutual information" in r.out and "chance" in r.out and "verdict" in r.out
    assert server.keys["full"] not in r.out + r.err


def test_leakage_command_errors(server, texts_file):
    env = {"OG_TEST_KEY": server.keys["full"]}
    r = cli_runner.run("leakage", server.url, "--model", "text", "--key-env", "OG_TEST_KEY", "--texts", texts_file,
                       "--n", "10", env=env)
    cli_runner.expect_error(r, 2, "every answer carried the label")  # a random tiny model labels all alike
    r = cli_runner.run("leakage", server.url, "--model", "digits", "--key-env", "OG_TEST_KEY", env=env)
    cli_runner.expect_error(r, 2, "--inputs")
    r = cli_runner.run("leakage", server.url, "--model", "digits", "--inputs", server.bundles["digits"] /
                       "golden.npz", "--n", "10")
    cli_runner.expect_error(r, 2, "401")
    r = cli_runner.run("leakage", server.url, "--model", "digits", "--key-env", "OG_TEST_KEY", "--inputs",
                       server.bundles["digits"] / "golden.npz", "--n", "5", env=env)
    cli_runner.expect_error(r, 2, "--n")
