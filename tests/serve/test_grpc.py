"""The Open Inference Protocol over gRPC (--grpc-port): a real server process on 127.0.0.1 called with
tritonclient.grpc, its answers and refusals those of the HTTP app it goes through; raw calls through
tritonclient's own stubs (another copy of the same proto: the wire format is the contract); and the translation
to and from the HTTP binary extension, in process.
"""

from __future__ import annotations

import filecmp
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from serve_support import Server, free_port, make_keys, self_signed, start
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

import cli_runner
from onnxguard.serve import audit as audit_lib
from onnxguard.trust import PublicKeys, TrustPolicy, open_bundle

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


class GrpcServer(Server):
    grpc_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.target)

    def meta(self, key: str = "full") -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[key]}"}


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory, served_bundles):
    """``onnxguard serve digits --grpc-port N``, with keys and an audit log of its own."""
    root = tmp_path_factory.mktemp("grpc")
    secrets = make_keys(root / "keys.db")
    port, gport = free_port(), free_port()
    b = served_bundles
    log = root / "server.log"
    proc = start([f"digits={b['digits']}", "--public-key", str(b["public_key"]), "--keys", str(root / "keys.db"),
                  "--audit", str(root / "audit.db"), "--grpc-port", str(gport)], port, log)
    s = GrpcServer(f"http://127.0.0.1:{port}", port, proc, secrets, root / "keys.db", root / "audit.db",
                   {"digits": b["digits"]}, b["public_key"], log)
    s.grpc_port = gport
    yield s
    assert s.stop() == 0, log.read_text()  # drained and closed cleanly
    assert "Traceback" not in log.read_text(), log.read_text()


def _golden(bundle):
    return open_bundle(bundle, TrustPolicy(PublicKeys((bundle.parent / "keys" / "signing-key.pub.pem",))))


def _input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def _refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def _raw_call(server: GrpcServer, method: str, request, metadata: dict[str, str] | None = None):
    """A call through tritonclient's own stub, for what its client hides: trailing metadata, typed contents."""
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return getattr(stub, method).with_call(request, metadata=tuple((metadata or {}).items()), timeout=30)


# -- round trips ---------------------------------------------------------------------------------------------------

def test_tritonclient_round_trip_equals_the_golden_and_http_outputs(grpc_server):
    opened = _golden(grpc_server.bundles["digits"])
    golden = opened.golden()
    client = grpc_server.client()
    for batch, ref in zip(golden.inputs, golden.references, strict=True):
        (name, x), = batch.items()
        outs = [grpcclient.InferRequestedOutput(n) for n in ref]
        result = client.infer("digits", [_input(x, name)], outputs=outs, headers=grpc_server.meta(),
                              request_id="r-1")
        assert result.get_response().id == "r-1" and result.get_response().model_name == "digits"
        body = {"inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        http = httpx.post(f"{grpc_server.url}/v2/models/digits/infer", json=body, headers=grpc_server.headers())
        http_outputs = {o["name"]: o for o in http.json()["outputs"]}
        for n, want in ref.items():
            got = result.as_numpy(n)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5) if want.dtype.kind == "f" else \
                np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got.ravel(), np.asarray(http_outputs[n]["data"], got.dtype))


def test_typed_contents_give_the_same_outputs_as_raw_bytes(grpc_server):
    x = np.random.default_rng(1).random((3, 64), dtype=np.float32)
    raw = grpc_server.client().infer("digits", [_input(x)], headers=grpc_server.meta()).as_numpy("probabilities")
    request = pb.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3, 64])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response, _ = _raw_call(grpc_server, "ModelInfer", request, grpc_server.meta())
    names = [o.name for o in response.outputs]
    got = np.frombuffer(response.raw_output_contents[names.index("probabilities")], np.float32).reshape(3, -1)
    np.testing.assert_array_equal(got, raw)
    # values in another field than the datatype's go through the app's own conversion and checks
    request.inputs[0].datatype = "FP64"
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(grpc_server, "ModelInfer", request, grpc_server.meta())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "datatype FP64" in info.value.details()
    request.inputs[0].datatype = "FP32"
    del request.inputs[0].contents.fp32_contents[-1]
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(grpc_server, "ModelInfer", request, grpc_server.meta())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "191 values" in info.value.details()


def test_concurrent_calls_are_batched_and_each_gets_its_own_rows(grpc_server):
    import threading

    from onnxguard import runtime

    rng = np.random.default_rng(2)
    xs = [rng.random((1 + i % 3, 64), dtype=np.float32) for i in range(24)]
    results: dict[int, np.ndarray] = {}
    client = grpc_server.client()

    def call(i: int) -> None:
        results[i] = client.infer("digits", [_input(xs[i])], headers=grpc_server.meta()).as_numpy("probabilities")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sess = runtime.session(_golden(grpc_server.bundles["digits"]).model_bytes)
    for i, x in enumerate(xs):
        np.testing.assert_allclose(results[i], sess.run(["probabilities"], {"input": x})[0], rtol=1e-5, atol=1e-6)


# -- health and metadata --------------------------------------------------------------------------------------------

def test_health_and_metadata_with_the_digest(grpc_server):
    client = grpc_server.client()
    assert client.is_server_live() and client.is_server_ready()  # no key, as over HTTP
    assert client.is_model_ready("digits", headers=grpc_server.meta())
    assert client.is_model_ready("digits", "1.2.3", headers=grpc_server.meta())
    server_meta = client.get_server_metadata(headers=grpc_server.meta())
    assert server_meta.name == "onnxguard" and "binary_tensor_data" in server_meta.extensions
    meta = client.get_model_metadata("digits", headers=grpc_server.meta())
    http = httpx.get(f"{grpc_server.url}/v2/models/digits", headers=grpc_server.headers()).json()
    assert meta.name == "digits" and list(meta.versions) == http["versions"] == ["1.2.3"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == \
        [(t["name"], t["datatype"], t["shape"]) for t in http["inputs"]]
    assert [t.name for t in meta.outputs] == [t["name"] for t in http["outputs"]]
    _, call = _raw_call(grpc_server, "ModelMetadata", pb.ModelMetadataRequest(name="digits"), grpc_server.meta())
    assert dict(call.trailing_metadata())["onnxguard-model-digest"] == http["parameters"]["digest"]
    x = np.zeros((1, 64), np.float32)
    request = pb.ModelInferRequest(model_name="digits", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 64])], raw_input_contents=[x.tobytes()])
    _, call = _raw_call(grpc_server, "ModelInfer", request, grpc_server.meta())
    assert dict(call.trailing_metadata())["onnxguard-model-digest"] == http["parameters"]["digest"]


def test_an_unknown_model_or_version_is_not_found(grpc_server):
    client = grpc_server.client()
    e = _refused(lambda: client.get_model_metadata("nope", headers=grpc_server.meta()))
    assert e.status() == "StatusCode.NOT_FOUND" and "no model named 'nope'" in e.message()
    e = _refused(lambda: client.is_model_ready("digits", "9", headers=grpc_server.meta()))
    assert e.status() == "StatusCode.NOT_FOUND" and "no version '9'" in e.message()
    e = _refused(lambda: client.infer("digits/versions/1.2.3", [_input(np.zeros((1, 64), np.float32))],
                                      headers=grpc_server.meta()))
    assert e.status() == "StatusCode.NOT_FOUND"  # a '/' in a name does not reach another route


# -- who may call ---------------------------------------------------------------------------------------------------

def test_no_key_or_a_wrong_key_is_unauthenticated(grpc_server):
    client = grpc_server.client()
    x = np.zeros((1, 64), np.float32)
    for headers in (None, {"authorization": "Bearer nope"}):
        e = _refused(lambda h=headers: client.infer("digits", [_input(x)], headers=h))
        assert e.status() == "StatusCode.UNAUTHENTICATED" and "API key" in e.message()
    e = _refused(lambda: client.get_model_metadata("digits"))
    assert e.status() == "StatusCode.UNAUTHENTICATED"


def test_a_key_out_of_scope_is_permission_denied(grpc_server):
    e = _refused(lambda: grpc_server.client().infer("digits", [_input(np.zeros((1, 64), np.float32))],
                                                    headers=grpc_server.meta("text-only")))
    assert e.status() == "StatusCode.PERMISSION_DENIED" and "may not call model 'digits'" in e.message()


def test_a_rate_limit_is_resource_exhausted_with_retry_after(grpc_server):
    x = np.zeros((1, 64), np.float32)
    client = grpc_server.client()
    for _ in range(3):  # the key allows 3 a minute
        client.infer("digits", [_input(x)], headers=grpc_server.meta("slow"))
    request = pb.ModelInferRequest(model_name="digits", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 64])], raw_input_contents=[x.tobytes()])
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(grpc_server, "ModelInfer", request, grpc_server.meta("slow"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in info.value.details()
    assert 1 <= int(dict(info.value.trailing_metadata())["retry-after"]) <= 60


def test_a_spent_budget_is_resource_exhausted_and_the_output_policy_applies(grpc_server):
    client = grpc_server.client()
    x = np.zeros((3, 64), np.float32)
    client.infer("digits", [_input(x)], headers=grpc_server.meta("budget"))  # 3 of its 5 rows
    e = _refused(lambda: client.infer("digits", [_input(x)], headers=grpc_server.meta("budget")))
    assert e.status() == "StatusCode.RESOURCE_EXHAUSTED" and "budget" in e.message()
    labelled = client.infer("digits", [_input(x)], headers=grpc_server.meta("label")).get_response()
    assert sorted(o.name for o in labelled.outputs) == ["label", "probabilities.label"]  # no scores for this key


# -- bad input: INVALID_ARGUMENT naming the problem ------------------------------------------------------------------

BAD = [
    ("wrong datatype", "input", "FP64", (1, 64), "datatype FP64"),
    ("wrong dim", "input", "FP32", (1, 63), "dimension 1 is 63"),
    ("wrong rank", "input", "FP32", (64,), "rank 1"),
    ("wrong name", "pixels", "FP32", (1, 64), "missing input(s) ['input']"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_are_invalid_argument_naming_the_problem(grpc_server, case):
    _, name, datatype, shape, fragment = case
    x = np.zeros(shape, np.float64 if datatype == "FP64" else np.float32)
    e = _refused(lambda: grpc_server.client().infer("digits", [_input(x, name, datatype)],
                                                    headers=grpc_server.meta()))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and fragment in e.message(), e.message()


def test_malformed_raw_contents_are_invalid_argument(grpc_server):
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])
    cases = [([b"\0" * 10], "10 bytes of binary data"),  # too few bytes for the shape
             ([b"\0" * 256, b"\0" * 4], "4 bytes of binary data are not claimed"),  # raw contents with no input
             ([], "neither 'data' nor binary data")]
    for raw, fragment in cases:
        request = pb.ModelInferRequest(model_name="digits", inputs=[tensor], raw_input_contents=raw)
        with pytest.raises(grpc.RpcError) as info:
            _raw_call(grpc_server, "ModelInfer", request, grpc_server.meta())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in info.value.details()


# -- audit and metrics ----------------------------------------------------------------------------------------------

def _count(metrics: str, status: str, reason: str) -> float:
    prefix = f'onnxguard_requests_total{{model="digits",reason="{reason}",status="{status}"}} '
    return sum(float(line[len(prefix):]) for line in metrics.splitlines() if line.startswith(prefix))


def test_every_grpc_call_is_audited_and_counted(grpc_server):
    def metrics() -> str:
        return httpx.get(f"{grpc_server.url}/metrics", headers=grpc_server.headers()).text

    metrics_before = metrics()  # itself a request, and audited: before the count
    records_before = len(audit_lib.tail(grpc_server.audit_db, 10**6))
    client = grpc_server.client()
    x = np.zeros((2, 64), np.float32)
    client.infer("digits", [_input(x)], headers=grpc_server.meta())
    _refused(lambda: client.infer("digits", [_input(x)]))
    _refused(lambda: client.infer("digits", [_input(x.astype(np.float64), datatype="FP64")],
                                  headers=grpc_server.meta()))
    client.get_model_metadata("digits", headers=grpc_server.meta())
    rows = [r for _, r in audit_lib.tail(grpc_server.audit_db, 4)]
    assert len(audit_lib.tail(grpc_server.audit_db, 10**6)) == records_before + 4
    assert [r.status for r in rows] == [200, 401, 400, 200]
    assert [r.reason for r in rows[1:3]] == ["no key", "bad input"]
    assert rows[0].batch_id is not None and rows[0].key_id and rows[1].key_id is None
    assert all(r.client.startswith("127.0.0.1:") and r.model == "digits" for r in rows)
    assert rows[0].digest == rows[3].digest and rows[0].request_sha256  # the body's hash, never the body
    after = metrics()
    for status, reason in (("401", "no key"), ("400", "bad input")):
        assert _count(after, status, reason) == _count(metrics_before, status, reason) + 1
    r = cli_runner.run("audit", "verify", grpc_server.audit_db)
    assert r.code == 0 and "PASSED" in r.out, str(r)


def test_a_call_the_client_gives_up_on_is_still_answered_and_recorded(grpc_server):
    import time

    before = len(audit_lib.tail(grpc_server.audit_db, 10**6))
    x = np.zeros((1, 64), np.float32)
    e = _refused(lambda: grpc_server.client().infer("digits", [_input(x)], headers=grpc_server.meta("padded"),
                                                    client_timeout=0.1))  # answered no earlier than 300 ms
    assert e.status() == "StatusCode.DEADLINE_EXCEEDED"
    deadline = time.monotonic() + 10
    while len(audit_lib.tail(grpc_server.audit_db, 10**6)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    (_, record), = audit_lib.tail(grpc_server.audit_db, 1)
    assert record.status == 200 and record.latency_ms >= 250 and record.batch_id is not None


# -- the translation, in process -------------------------------------------------------------------------------------

def _decoded(request):
    from onnxguard.serve import protocol
    from onnxguard.serve.grpc import tensors

    body, head = tensors.request_body(request)
    return protocol.decode_request(body, head)


def _ours():
    from onnxguard.serve.grpc import grpc_predict_v2_pb2

    return grpc_predict_v2_pb2


def test_raw_and_typed_contents_become_the_http_request():
    ours = _ours()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = ours.ModelInferRequest(model_name="m", id="r", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    ids = request.inputs.add(name="ids", datatype="INT8", shape=[3])
    ids.contents.int_contents.extend([-1, 0, 127])  # INT8 travels in int32: JSON data, converted by the app
    words = request.inputs.add(name="words", datatype="BYTES", shape=[2])
    words.contents.bytes_contents.extend([b"a", b"\xffbc"])
    exact = request.inputs.add(name="exact", datatype="INT64", shape=[2])
    exact.contents.int64_contents.extend([2**40, -3])
    f64 = request.inputs.add(name="f64", datatype="FP64", shape=[2])
    f64.contents.fp64_contents.extend([0.1, 1e300])  # read from the packed wire form
    stray = request.inputs.add(name="stray", datatype="FP32", shape=[2])
    stray.contents.fp32_contents.extend([1.5, -2.5])
    stray.contents.int_contents.append(7)  # another field set too: read element by element, the datatype's field
    request.outputs.add(name="y")
    request.parameters["priority"].int64_param = 3
    decoded = _decoded(request)
    assert decoded.inputs["f64"].dtype == np.float64 and decoded.inputs["f64"].tolist() == [0.1, 1e300]
    assert decoded.inputs["stray"].dtype == np.float32 and decoded.inputs["stray"].tolist() == [1.5, -2.5]
    np.testing.assert_array_equal(decoded.inputs["x"], x)
    assert decoded.inputs["ids"].dtype == np.int8 and decoded.inputs["ids"].tolist() == [-1, 0, 127]
    assert decoded.inputs["words"].tolist() == [b"a", b"\xffbc"]
    assert decoded.inputs["exact"].dtype == np.int64 and decoded.inputs["exact"].tolist() == [2**40, -3]
    assert decoded.outputs == ("y",) and decoded.binary_outputs == {"y"} and decoded.binary_all
    assert decoded.id == "r" and decoded.parameters["priority"] == 3


@pytest.mark.parametrize("case", [
    ("INT8", "int_contents", [300], "not all INT8"),
    ("FP32", "fp32_contents", [1.0] * 5, "5 values for shape [2, 3]"),
    ("FP16", "fp32_contents", [1.0] * 5, "5 values for shape [2, 3]"),
], ids=["int8 out of range", "fp32 count", "fp16 count"])
def test_typed_contents_that_do_not_fit_are_refused_by_the_app_naming_them(case):
    from onnxguard.serve.protocol import ProtocolError

    datatype, field, values, fragment = case
    request = _ours().ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 3] if len(values) == 5 else [1])
    getattr(tensor.contents, field).extend(values)
    with pytest.raises(ProtocolError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        _decoded(request)


def test_the_apps_binary_answer_becomes_raw_output_contents():
    from onnxguard.serve import protocol
    from onnxguard.serve.grpc import asgi, tensors

    probs = np.random.default_rng(3).random((2, 4), dtype=np.float32)
    names = np.array([b"cat", b"dog"], dtype=object)
    req = protocol.InferRequest({}, None, frozenset(), True, id="r")
    body, head = protocol.encode_response("m", "1", [("p", probs), ("n", names)], req, {"took": 1.5})
    answer = asgi.Answer(200, {protocol.HEADER_LENGTH: str(head)}, body)
    response = tensors.infer_response(answer)
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "r")
    assert response.parameters["took"].double_param == 1.5
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("p", "FP32", [2, 4]),
                                                                              ("n", "BYTES", [2])]
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 4), probs)
    assert response.raw_output_contents[1] == b"\x03\x00\x00\x00cat\x03\x00\x00\x00dog"
    # the same response read by tritonclient's copy of the proto
    parsed = pb.ModelInferResponse.FromString(response.SerializeToString())
    assert parsed.raw_output_contents[0] == probs.tobytes() and parsed.outputs[1].datatype == "BYTES"


def test_peers_and_paths():
    from onnxguard.serve.grpc import service

    assert service.peer_address("ipv4:127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert service.peer_address("ipv6:[::1]:5001") == ("::1", 5001)
    assert service.peer_address("ipv6:%5B::1%5D:5002") == ("::1", 5002)
    assert service.peer_address("unix:/run/s.sock") == ("unix:/run/s.sock", 0)
    assert service.model_path("m", "", "/infer") == "/v2/models/m/infer"
    assert service.model_path("m", "2", "/ready") == "/v2/models/m/versions/2/ready"
    assert service.model_path("a/versions/2", "") == "/v2/models/a%2Fversions%2F2"


# -- TLS, the size limit, the port ------------------------------------------------------------------------------------

def test_tls_and_the_body_limit_apply_to_grpc_from_a_config_file(tmp_path, served_bundles):
    import ssl

    cert, key = self_signed(tmp_path)
    secrets = make_keys(tmp_path / "keys.db")
    port, gport = free_port(), free_port()
    (tmp_path / "serve.toml").write_text(
        f'keys = "{tmp_path / "keys.db"}"\naudit = "{tmp_path / "audit.db"}"\ncertfile = "{cert}"\n'
        f'keyfile = "{key}"\ngrpc_port = {gport}\nmax_body_bytes = 4096\n')
    proc = start([str(served_bundles["digits"]), "--public-key", str(served_bundles["public_key"]), "--config",
                  str(tmp_path / "serve.toml")], port, tmp_path / "log.txt", scheme="https",
                 verify=ssl.create_default_context(cafile=str(cert)))
    try:
        assert f"gRPC on 127.0.0.1:{gport} (TLS)" in (tmp_path / "log.txt").read_text()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{gport}", ssl=True, root_certificates=str(cert))
        auth = {"authorization": f"Bearer {secrets['full']}"}
        x = np.zeros((1, 64), np.float32)
        assert client.infer("digits", [_input(x)], headers=auth).as_numpy("label").shape == (1,)
        big = np.zeros((20, 64), np.float32)  # 5,120 bytes of tensor: over the 4,096-byte body limit
        e = _refused(lambda: client.infer("digits", [_input(big)], headers=auth))
        assert e.status() == "StatusCode.RESOURCE_EXHAUSTED", e.message()
        e = _refused(lambda: grpcclient.InferenceServerClient(f"127.0.0.1:{gport}").is_server_live())
        assert e.status() == "StatusCode.UNAVAILABLE"  # plaintext is not answered
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.mark.slow  # a server process that opens its bundle before it finds the port taken
def test_a_grpc_port_in_use_or_shared_with_http_is_refused(tmp_path, served_bundles):
    import socket

    make_keys(tmp_path / "keys.db")
    args = [str(served_bundles["digits"]), "--public-key", str(served_bundles["public_key"]), "--keys",
            str(tmp_path / "keys.db"), "--audit", str(tmp_path / "audit.db"), "--host", "127.0.0.1"]
    port = free_port()
    r = cli_runner.run("serve", *args, "--port", str(port), "--grpc-port", str(port))
    cli_runner.expect_error(r, 2, f"gRPC port {port}", "other than the HTTP port")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        r = cli_runner.run("serve", *args, "--port", str(free_port()), "--grpc-port", str(busy), process=True,
                           timeout=120)
    cli_runner.expect_error(r, 2, f"127.0.0.1:{busy}", "cannot listen")


def test_a_grpc_port_taken_after_the_check_stops_the_server_cleanly():
    import socket
    from contextlib import asynccontextmanager

    import uvicorn
    from fastapi import FastAPI

    from onnxguard.errors import InputError
    from onnxguard.serve.grpc.service import GrpcFront

    events = []

    @asynccontextmanager
    async def lifespan(_):
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)
    with socket.socket() as held, socket.socket() as http:
        held.bind(("127.0.0.1", 0))
        held.listen()
        http.bind(("127.0.0.1", 0))
        http.listen()
        front = GrpcFront(app, "127.0.0.1", held.getsockname()[1], max_message_bytes=1 << 20)
        server = front.uvicorn(uvicorn.Config(front.wrap(app), lifespan="on", log_config=None))
        with pytest.raises(InputError, match="gRPC cannot listen"):
            server.run(sockets=[http])
    assert events == ["startup", "shutdown"]  # the app was shut down, not left running


# -- the generated modules ------------------------------------------------------------------------------------------

def test_the_generated_modules_are_up_to_date(tmp_path):
    r = subprocess.run(["make", "-s", "-C", str(REPO), "proto", f"PROTO_OUT={tmp_path}",
                        f"BIN={Path(sys.executable).parent}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    committed = REPO / "src" / "onnxguard" / "serve" / "grpc"
    fresh = tmp_path / "onnxguard" / "serve" / "grpc"
    for name in GENERATED:
        assert filecmp.cmp(committed / name, fresh / name, shallow=False), f"{name} is stale: run make proto"


def test_the_serving_install_does_not_need_grpcio_tools():
    code = ("import sys; sys.modules['grpc_tools'] = None; "  # as if not installed: importing it fails
            "from onnxguard.serve.grpc import service, grpc_predict_v2_pb2 as pb; "
            "assert pb.ModelInferRequest(model_name='m').SerializeToString() == b'\\n\\x01m'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# -- graceful shutdown (last: it stops the module's server) ----------------------------------------------------------

def test_sigterm_answers_the_calls_in_flight_then_refuses(grpc_server):
    import threading
    import time

    x = np.zeros((1, 64), np.float32)
    client = grpc_server.client()
    result: dict[str, object] = {}

    def slow_call() -> None:  # the 'padded' key is answered no earlier than 300 ms after arrival
        try:
            result["ok"] = client.infer("digits", [_input(x)], headers=grpc_server.meta("padded")).as_numpy("label")
        except InferenceServerException as e:
            result["error"] = e

    t = threading.Thread(target=slow_call)
    t.start()
    time.sleep(0.1)
    grpc_server.proc.send_signal(signal.SIGTERM)
    t.join(30)
    assert "ok" in result, result
    assert grpc_server.proc.wait(60) == 0
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(grpc_server.target).is_server_live()
    assert audit_lib.verify(grpc_server.audit_db).passed
