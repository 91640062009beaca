# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
# `make test-fast` leaves out the tests marked slow (under a minute). `make docs` builds the site into site/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU build of torch first, so nothing below pulls a CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[all,test,docs]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/mvptr demo --config demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

# the API reference, the guides and every command's --help; a warning fails the build
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf runs/demo data/demo
