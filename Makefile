# relay: developer entry points.
#
#   make run     create .venv if needed, install relay, run it with the embedded dev config
#   make test    create .venv if needed, install relay[test], ruff + mypy + pytest
#   make lint    ruff + mypy + import-linter contracts (pyproject.toml [tool.importlinter])
#   make bench   pytest-benchmark suites under bench/ (JSON in bench/out/), then bench-compare
#   make bench-compare  relay vs a throwaway Postfix instance, same load and sink
#   make clean   caches and build output (keeps .venv and ./var); make distclean removes those too
#
# pip runs only when pyproject.toml is newer than the stamp file in .venv, so a
# second `make run` starts in about a second.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
# The suite is mostly real processes and sockets waiting on each other: files run in
# parallel workers (one file's tests stay in one worker, so its module fixtures are made
# once). PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= 3
LINT_PATHS := relay tests $(wildcard bench)

.PHONY: run test lint pytest bench bench-compare clean distclean venv

run: $(VENV)/.installed-run
	$(BIN)/relay serve

test: $(VENV)/.installed-test lint pytest

venv: $(BIN)/pip

# A venv without pip (python3-venv missing on Debian) is removed so the next try starts clean.
$(BIN)/pip:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "relay needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) -V 2>&1)." \
	       "Run with PYTHON=python3.11 (or newer)." >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "'$(PYTHON) -m venv' failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
	@test -x $(BIN)/pip || { rm -rf $(VENV); \
	  echo "the venv has no pip; on Debian: apt-get install python3-venv" >&2; exit 1; }

$(VENV)/.installed-run: pyproject.toml | $(BIN)/pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

# lint-imports reads [tool.importlinter] from ./pyproject.toml and analyses the relay/ in
# the current directory: make runs recipes in the repository root (make -C <repo> lint).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/lint-imports

# pytest exit code 5 means "no tests collected": a warning, not a failure.
pytest: $(VENV)/.installed-test
	@$(BIN)/pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) \
	  $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: warning: pytest collected no tests" >&2; exit 0; fi; \
	exit $$rc

bench: $(VENV)/.installed-test
	@if [ -d bench ]; then mkdir -p bench/out; \
	  $(BIN)/pytest bench --benchmark-enable --benchmark-json=bench/out/benchmarks.json \
	    $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make bench: warning: no benchmarks in bench/ yet" >&2; \
	  rc=0; fi; [ $$rc -eq 0 ] || exit $$rc; \
	else echo "make bench: no bench/ directory yet" >&2; fi
	$(MAKE) bench-compare

# relay vs a throwaway Postfix on loopback (bench/compare_postfix.py); median of
# BENCH_REPEAT runs of BENCH_MESSAGES messages, 2 KB and 20 KB, 50 sessions.
BENCH_MESSAGES ?= 2000
BENCH_REPEAT ?= 3
bench-compare: $(VENV)/.installed-test
	$(BIN)/python bench/compare_postfix.py --messages $(BENCH_MESSAGES) \
	  --repeat $(BENCH_REPEAT) --workers2 $(BENCH_COMPARE_ARGS)

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .benchmarks bench/out .import_linter_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0r rm -rf

distclean: clean
	rm -rf $(VENV) var *.egg-info
