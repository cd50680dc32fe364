# One command to set up and run the example, one to set up and run the tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: quickstart test venv lock clean

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

test: venv
	$(BIN)/python -m pytest

lock:
	$(BIN)/python -m pip install --quiet pip-tools==7.6.2
	$(BIN)/pip-compile --quiet --extra all --extra dev --strip-extras --allow-unsafe \
	  --no-emit-find-links --no-emit-index-url -o requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --strip-extras --allow-unsafe \
	  --no-emit-find-links --no-emit-index-url -o requirements-core.lock pyproject.toml

clean:
	rm -rf $(VENV) build src/*.egg-info
