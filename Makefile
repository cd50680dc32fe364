# One command to set up and run the example, one to set up and run the tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: quickstart test venv system-deps lock clean

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

# The `age` command-line tool, for the encryption interop tests (Debian package; root installs it).
system-deps:
	@command -v age >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -qq age >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq age)); } || \
	  echo "note: install the 'age' package to run the age interop tests"

test: venv system-deps
	$(BIN)/python -m pytest

lock:
	$(BIN)/python -m pip install --quiet pip-tools==7.6.2
	$(BIN)/pip-compile --quiet --extra all --extra dev --strip-extras --allow-unsafe \
	  --no-emit-find-links --no-emit-index-url -o requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --strip-extras --allow-unsafe \
	  --no-emit-find-links --no-emit-index-url -o requirements-core.lock pyproject.toml

clean:
	rm -rf $(VENV) build src/*.egg-info
