# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck proto bench clean

$(BIN)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$*]'
	touch $@

demo: $(BIN)/.installed-emulator
	$(BIN)/qpu-k8s demo

lint: $(BIN)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(BIN)/.installed-test lint
	$(BIN)/python -m qpu_k8s.proto.generate --check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

proto: $(BIN)/.installed-test
	$(BIN)/python -m qpu_k8s.proto.generate

bench: $(BIN)/.installed-test
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
