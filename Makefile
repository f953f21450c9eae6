# Two commands for a newcomer (see README.md): `make demo` and `make test`.
# Both create the virtual environment on first use; nothing else needs to be running.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= data/raw
CUSTOMERS ?= 20000

.PHONY: demo test lint bench-features bench-decide constraints clean

$(BIN)/nba: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## The main job on embedded defaults: simulate a world, build its features (Feast), train,
## evaluate and register the uplift model (MLflow, champion), then serve decisions on
## http://127.0.0.1:3000 (Ctrl+C stops it; the API key is $(API_KEY) unless NBA_API_KEYS is set).
API_KEY ?= demo-key
demo: $(BIN)/nba
	$(BIN)/nba simulate --out $(DATA) --customers $(CUSTOMERS) --seed 7
	$(BIN)/nba features --raw $(DATA)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/nba train --raw $(DATA) --force
	NBA_API_KEYS=$${NBA_API_KEYS:-$(API_KEY)} OMP_WAIT_POLICY=PASSIVE $(BIN)/nba serve

## The test suite (what CI runs). Tests needing Redis/PostgreSQL skip when those are absent,
## unless NBA_REQUIRE_SERVICES=1.
test: $(BIN)/nba
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n 2 --dist loadfile --durations=10

lint: $(BIN)/nba
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-features: $(BIN)/nba
	$(BIN)/python benchmarks/features.py

bench-decide: $(BIN)/nba
	$(BIN)/python benchmarks/decide.py

## The Docker image's pins (constraints.txt, checked by the tests): rerun after a dependency change.
constraints: $(BIN)/nba
	$(BIN)/python tools/constraints.py

clean:
	rm -rf data feature_repo/data/*.parquet feature_repo/data/*.db
