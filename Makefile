# The two commands of the README. Both create (or reuse) .venv and install the kit into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROFILE ?= embedded
DATA ?=

.PHONY: study test reliability setup clean

study: setup  ## run the whole study (PROFILE=embedded; PROFILE=real DATA=<prepared indexes>) and regenerate reports/
	$(BIN)/mmd2v2 study --profile $(PROFILE) $(if $(DATA),--data $(DATA))

# One pytest-xdist worker per core, each computing on one thread (tests/conftest.py); the tests that share the smoke
# study or the real fixture run on one worker, which builds it once.
test: setup  ## run the test suite
	$(BIN)/python -m pytest -n auto --dist loadgroup

reliability: setup  ## rerun the reliability sweep and regenerate reports/reliability.md
	$(BIN)/python tests/reliability/make_report.py

setup: $(STAMP)

# Reinstall when the dependency list changes; the stamp makes a rerun instant.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --editable ".[notebooks,offline,bench,dev]"  # errors only
	touch $(STAMP)

clean:
	rm -rf $(VENV) *.egg-info
