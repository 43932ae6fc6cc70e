# The two commands a fresh machine needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch's OpenMP spin-waiting makes small CPU workloads 10-300x slower when anything runs beside it.
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint venv clean

$(BIN)/mpsearch: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,quanto,ray,sdnq,gguf]'
	touch $(BIN)/mpsearch

venv: $(BIN)/mpsearch

demo: venv
	$(BIN)/mpsearch demo

test: venv
	$(BIN)/python -m pytest -q -x --timeout=600

lint: venv
	$(BIN)/ruff check mpsearch solvers tests benchmarks

clean:
	rm -rf $(VENV)
