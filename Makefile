# portway — the two commands a user needs are `make run` and `make test`.
# `make run` installs what serving needs; `make test` (and lint, fmt, bench) add the dev tools on top.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP   := $(VENV)/.installed-dev
# pip's few hundred lines go here and are shown only when a step fails.
PIP_LOG     := $(VENV)/install.log
PIP         := $(BIN)/pip --disable-pip-version-check

# llama.cpp (the local model) is built once for a portable x86-64 baseline (AVX2, FMA, F16C) and kept as a
# wheel outside the venv. Not -march=native: a native build uses AMX / AVX-512 wherever the CPU advertises
# them, and on VMs that advertise AMX without enabling it the model segfaults (ggml_backend_amx_mul_mat);
# pip's own cache would also hand a wheel built natively on one machine to another.
LLAMA_VERSION    := 0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
WHEELS           ?= $(HOME)/.cache/portway/wheels/llama-$(LLAMA_VERSION)-x86-64-v3
LLAMA_WHEEL       = $(wildcard $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl)

SERVE_EXTRAS     := .[local,media]
LLAMA_INSTALL     = $(PIP) install --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
SERVE_INSTALL     = $(PIP) install --find-links $(WHEELS) -e '$(SERVE_EXTRAS)' 'llama-cpp-python==$(LLAMA_VERSION)'

# $(call quietly,what it does,command): one line saying what; the command's output (also appended to
# PIP_LOG) only if it fails.
define quietly
@echo "  $(1)"
@$(2) >$(PIP_LOG).step 2>&1; status=$$?; cat $(PIP_LOG).step >>$(PIP_LOG); \
  [ $$status -eq 0 ] || { tail -n 60 $(PIP_LOG).step; echo "make: $(1): failed (full log: $(PIP_LOG))"; }; \
  rm -f $(PIP_LOG).step; exit $$status
endef

.PHONY: install run test lint fmt bench clean llama-wheel

install: $(DEV_STAMP)

$(SERVE_STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "portway needs Python >= 3.11")'
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	@echo "Installing what portway needs to serve into $(VENV) (pip's output goes to $(PIP_LOG))"
	@: >$(PIP_LOG)
	$(call quietly,upgrading pip,$(PIP) install --upgrade pip)
	@test -n "$(LLAMA_WHEEL)" || $(MAKE) --no-print-directory llama-wheel
	$(call quietly,llama-cpp-python $(LLAMA_VERSION) from $(WHEELS),$(LLAMA_INSTALL))
	$(call quietly,portway with the local model and media engines (minutes the first time),$(SERVE_INSTALL))
	@touch $@

# The llama.cpp build is the one long step: say so, and how far along it is, while the compiler's output
# waits in a log that is shown if it fails.
llama-wheel:
	@mkdir -p $(WHEELS)
	@echo "  building llama-cpp-python $(LLAMA_VERSION) once into $(WHEELS): about 9 minutes on 2 cores"
	@log=$(WHEELS)/build.log; \
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel --no-cache-dir --no-deps -w $(WHEELS) \
	  'llama-cpp-python==$(LLAMA_VERSION)' >$$log 2>&1 & pid=$$!; \
	s=0; while kill -0 $$pid 2>/dev/null; do \
	  sleep 1; s=$$((s + 1)); \
	  [ $$((s % 60)) -ne 0 ] || echo "    still building llama.cpp: $$((s / 60)) min so far (of about 9)"; \
	done; \
	wait $$pid || { tail -n 60 $$log; echo "make: building llama-cpp-python failed; full log in $$log"; exit 1; }; \
	echo "    built in $$((s / 60)) min $$((s % 60)) s"

$(DEV_STAMP): $(SERVE_STAMP)
	$(call quietly,the dev tools: pytest; ruff; mypy; import-linter,$(PIP) install -e '.[dev]')
	@touch $@

run: $(SERVE_STAMP)
	$(BIN)/portway serve

test: $(DEV_STAMP)
	$(BIN)/pytest -q -rs -n 4 --dist loadfile --no-loadscope-reorder

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(DEV_STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(DEV_STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
