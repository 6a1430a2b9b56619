# The two commands: `make run` (a first pretraining run on CPU in minutes: configs/smoke.yaml;
# CONFIG=tiny for the 150-step default) and `make test` (the test suite).
# Both create the virtual environment from this project's own files first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS ?= constraints/cpu-py311.txt
STAMP := $(VENV)/.hetron-installed

.PHONY: venv run test bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(CONSTRAINTS) $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel pybind11
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

CONFIG ?= smoke

run: venv
	$(VENV)/bin/hetron train $(CONFIG) $(ARGS)

# pytest exits 5 when it collected no tests: that is a failure here.
test: venv
	scripts/slurm-local.sh start-for-tests
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Every benchmark in its reduced mode (minutes), each printing its ratios; BENCH_ARGS="--only trainer".
bench: venv
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
