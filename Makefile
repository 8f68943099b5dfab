# segflow — `make demo` runs the main job on a built-in default, `make test` runs every check.
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test lint bench clean

$(VENV)/.segflow-installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh

setup: $(VENV)/.segflow-installed

demo: setup
	$(BIN)/segflow demo --output demo

lint: setup
	$(BIN)/ruff check segflow pipelines tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider

bench: setup
	$(BIN)/python benchmarks/bench_tile_infer.py

clean:
	rm -rf demo out .pytest_cache .mypy_cache .ruff_cache
