# Two commands do all the set-up on a fresh machine:
#   make run    create .venv and install on first use, then run the default recipe (ARGS=... for Hydra overrides)
#   make test   same install on first use, then the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data)
# Real datasets: $LOTTERY_DATA if set, else ../shared/data when present (tests skip real-data checks without it).
export LOTTERY_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)

.PHONY: install run test lint bench

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt -e ".[dev,graph]"
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lightning-lottery $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)
