# Two commands for a newcomer (see README.md): `make demo` and `make test`.
# Both create the virtual environment on first use; nothing else needs to be running.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= data/raw
CUSTOMERS ?= 20000

.PHONY: demo test lint bench-features bench-decide lock clean

# The environment is built from the lock (requirements.lock, tools/lock.py), never from the
# day's newest releases: first the locked installer tools, then the project (editable, built
# without isolation so that no unpinned setuptools is fetched for the build). A changed lock or
# pyproject.toml rebuilds it from scratch, so nothing outside the lock lingers.
LOCK   := requirements.lock
PIP    := $(BIN)/python -m pip --disable-pip-version-check
$(BIN)/nba: pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	@echo "installing the locked dependencies into $(VENV) (about 2 minutes on a fresh machine)"
	$(PIP) install --quiet --constraint $(LOCK) pip setuptools wheel
	$(PIP) install --quiet --constraint $(LOCK) --no-build-isolation -e '.[dev]'
	$(BIN)/python tools/lock.py --check-installed
	touch $@

## The main job on embedded defaults: simulate a world, build its features (Feast), train,
## evaluate and register the uplift model (MLflow, champion), then serve decisions on
## http://127.0.0.1:3000 (Ctrl+C stops it; the API key is $(API_KEY) unless NBA_API_KEYS is set).
API_KEY ?= demo-key
## The world's end, fixed once: the replay redraws the simulated customers from it (and the seed).
DEMO_END := $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
demo: $(BIN)/nba
	$(BIN)/nba simulate --out $(DATA) --customers $(CUSTOMERS) --seed 7 --end $(DEMO_END)
	$(BIN)/nba features --raw $(DATA)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/nba train --raw $(DATA) --force
	# Eight weeks of the champion's decisions with the global control group (nba.replay), their
	# outcomes, and what they earned: reports/impact/impact-*.html
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m nba.replay --raw $(DATA) --customers $(CUSTOMERS) \
		--seed 7 --end $(DEMO_END)
	$(BIN)/nba outcomes --raw $(DATA) --log-dir logs/replay
	$(BIN)/nba impact --raw $(DATA) --log-dir logs/replay --since 8w
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

## Upgrade the dependencies on purpose: resolve the newest versions pyproject.toml allows,
## rewrite the lock, rebuild the environment from it and run the tests. Commit the new lock
## only if they pass.
lock:
	$(PYTHON) -m venv --clear .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check packaging
	.venv-lock/bin/python tools/lock.py
	rm -rf .venv-lock
	$(MAKE) test

clean:
	rm -rf data logs reports models/mlflow.db models/artifacts models/serving \
		feature_repo/data/*.parquet feature_repo/data/*.db
