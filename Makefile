# segflow — `make demo` runs the main job on a built-in default, `make test` runs every check.
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test lint bench mutate clean

$(VENV)/.segflow-installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh

setup: $(VENV)/.segflow-installed

demo: setup
	$(BIN)/segflow demo --output demo

lint: setup
	$(BIN)/ruff check segflow pipelines tests benchmarks
	$(BIN)/mypy

# Line and branch coverage of the library, printed after the tests (a report, not a gate). It slows
# pure-Python tests about 2x (tests/test_plan.py 9 -> 19 s), numeric ones 15-30 %; `make test COV=`
# runs without it.
COV ?= --cov=segflow --cov-branch --cov-report=term-missing:skip-covered

test: lint
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider $(COV)

bench: setup
	$(BIN)/python benchmarks/bench_tile_infer.py

# Mutation testing, run like a benchmark (too slow for every CI run): mutmut mutates the modules that
# decide what users get ([tool.mutmut] only_mutate in pyproject.toml) and runs, for each mutant, the
# tests of MUTATE_TESTS that call the mutated function. Results accumulate in mutants/: a later full
# run checks only mutants of changed functions (naming a subset in MUTATE_MODULES re-checks all of
# its mutants). MUTATE_TIME (seconds) stops the run early: the rest stays "not checked". The report,
# with the machine and the date, goes to MUTATE_REPORT. MUTATE_PYTEST adds pytest options (e.g. -m 'not slow'
# to leave end-to-end tests out when unit tests cover the module). MUTATE_PENDING=1 checks only the mutants
# of MUTATE_MODULES still pending (not checked, survived, no tests): it goes on after a time-limited run,
# or re-checks survivors after new tests. The pending names come from mutants/ as the last run left it: after
# editing a mutated function (mutmut renumbers its mutants) or adding a module, run it twice; a module added to
# only_mutate is mutated only once its source is newer than its copy in mutants/ (touch it). E.g.
#   make mutate MUTATE_MODULES=segflow/tiling.py MUTATE_TESTS="tests/test_tiling.py tests/test_stitch.py"
MUTATE_ALL = $(shell $(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["mutmut"]["only_mutate"])')
MUTATE_MODULES ?= $(MUTATE_ALL)
EVERY_TEST_FILE = $(wildcard tests/test_*.py tests/*/test_*.py)
MUTATE_TESTS ?= $(EVERY_TEST_FILE)
MUTATE_JOBS ?= $(shell nproc)
MUTATE_TIME ?=
MUTATE_PYTEST ?=
MUTATE_REPORT ?= benchmarks/results/mutation.md
MUTATE_PENDING ?=
MUTATE_NAMES = $(foreach n,$(if $(MUTATE_PENDING),$(shell $(BIN)/python benchmarks/mutation_report.py --pending $(MUTATE_MODULES)),$(if $(filter-out $(MUTATE_MODULES),$(MUTATE_ALL)),$(shell $(BIN)/python benchmarks/mutation_report.py --patterns $(MUTATE_MODULES)))),'$(n)')

# (with MUTATE_PENDING=1 and nothing pending, mutmut is not run: without names it would run every module)
mutate: setup
	$(if $(and $(MUTATE_PENDING),$(if $(strip $(MUTATE_NAMES)),,none)),@echo "no mutant of $(MUTATE_MODULES) is pending", \
	-PYTEST_ADDOPTS="$(addprefix --ignore=,$(filter-out $(MUTATE_TESTS),$(EVERY_TEST_FILE))) $(MUTATE_PYTEST)" \
		nice -n 19 $(if $(MUTATE_TIME),timeout -s INT $(MUTATE_TIME)) \
		$(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTATE_NAMES))
	$(BIN)/python benchmarks/mutation_report.py --output $(MUTATE_REPORT) --tests "$(MUTATE_TESTS)" \
		$(if $(MUTATE_TIME),--time-limit $(MUTATE_TIME)) $(MUTATE_MODULES)

clean:
	rm -rf demo out .pytest_cache .mypy_cache .ruff_cache mutants .coverage .coverage.* htmlcov
