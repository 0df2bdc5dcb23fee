# Two commands on a fresh machine with python3: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint sim bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)  ## start the daemon in the sandbox (Ctrl-C stops it)
	$(VENV)/bin/faxbridge run

test: $(STAMP)  ## the whole test suite, then the linter
	$(VENV)/bin/pytest -q
	$(VENV)/bin/ruff check .

lint: $(STAMP)
	$(VENV)/bin/ruff check .

sim: $(STAMP)
	$(VENV)/bin/faxbridge sim

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
