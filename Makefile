# portway — the two commands a user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# llama.cpp (the local model) is built once for a portable x86-64 baseline (AVX2, FMA, F16C) and kept as a
# wheel outside the venv. Not -march=native: a native build uses AMX / AVX-512 wherever the CPU advertises
# them, and on VMs that advertise AMX without enabling it the model segfaults (ggml_backend_amx_mul_mat);
# pip's own cache would also hand a wheel built natively on one machine to another.
LLAMA_VERSION    := 0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
WHEELS           ?= $(HOME)/.cache/portway/wheels/llama-$(LLAMA_VERSION)-x86-64-v3

.PHONY: install run test lint fmt bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "portway needs Python >= 3.11")'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "Building llama-cpp-python $(LLAMA_VERSION) once into $(WHEELS) (~9 min on 2 cores)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --no-cache-dir --no-deps -w $(WHEELS) \
	    'llama-cpp-python==$(LLAMA_VERSION)'; }
	$(BIN)/pip install --quiet --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/pip install --find-links $(WHEELS) -e '.[dev,local,media]' 'llama-cpp-python==$(LLAMA_VERSION)'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/portway serve

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
