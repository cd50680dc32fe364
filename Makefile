# One command to set up and run the example, one to set up and run the tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: quickstart test lint venv system-deps lock clean proto bench-anchors

# The virtual environment is made from the lock file, once; `make lock` refreshes the lock.
$(BIN)/onnxguard: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

venv: $(BIN)/onnxguard

quickstart: venv
	$(BIN)/onnxguard quickstart

# Debian packages the tests use: `age` (encryption interop), npm (fetches the pinned onnxruntime-web for the
# web target) and headless Chromium with its driver (the web target's check). Root installs what is missing;
# anyone else is told what to install.
system-deps:
	@missing=""; command -v age >/dev/null || missing="age"; \
	  command -v npm >/dev/null || missing="$$missing npm"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	  [ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; }; }; } || \
	  { echo "install the Debian packages:$$missing (the tests need them)"; exit 1; }

# The tests, after the linters: ruff (pyflakes, pycodestyle, isort, bugbear, blind-except, docstrings on the
# public API) and mypy (strict on bundle/ and trust/, the trust boundary).
test: venv system-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

lock:
	$(BIN)/python -m pip install --quiet pip-tools==7.6.2
	$(BIN)/pip-compile --quiet --extra all --extra dev --strip-extras --allow-unsafe \
	  --no-emit-find-links --no-emit-index-url -o requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --strip-extras --allow-unsafe \
	  --no-emit-find-links --no-emit-index-url -o requirements-core.lock pyproject.toml

# The anchor servers of benchmark E (LitServe), in a venv of their own: they are not onnxguard dependencies.
bench-anchors: .venv-anchors/bin/litserve-ready
.venv-anchors/bin/litserve-ready: benchmarks/anchors/requirements.lock
	test -x .venv-anchors/bin/python || $(PYTHON) -m venv .venv-anchors
	.venv-anchors/bin/python -m pip install --quiet -r benchmarks/anchors/requirements.lock
	touch $@

# The gRPC modules of the Open Inference Protocol, generated from its .proto (grpcio-tools: a dev dependency; the
# server needs only grpcio and protobuf). tests/serve/test_grpc.py checks that the committed ones are up to date.
PROTO     := src/onnxguard/serve/grpc/grpc_predict_v2.proto
PROTO_OUT ?= src
proto:
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
	  --grpc_python_out=$(PROTO_OUT) $(PROTO)
	# a descriptor pool of its own: tritonclient.grpc puts the same `inference` names in protobuf's default one
	sed -i.orig 's/_descriptor_pool\.Default()/_descriptor_pool.DescriptorPool()/' \
	  $(PROTO_OUT)/$(PROTO:src/%.proto=%_pb2.py) && rm $(PROTO_OUT)/$(PROTO:src/%.proto=%_pb2.py).orig

clean:
	rm -rf $(VENV) .venv-anchors build src/*.egg-info
