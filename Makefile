# Every install step lives here: `make test` and `make demo` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install system-deps test check demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

# Tools the document tests use to read PDFs as a person would (pdftotext, pdftoppm).
system-deps:
	@command -v pdftotext >/dev/null && command -v pdftoppm >/dev/null || \
	  { command -v apt-get >/dev/null && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poppler-utils >/dev/null) || \
	    echo "install poppler-utils (pdftotext, pdftoppm) for the document tests"; }

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff check metering billing streamtoll tests
	$(BIN)/ruff format --check metering billing streamtoll tests
	$(BIN)/mypy
	$(BIN)/lint-imports

demo: $(STAMP)
	$(BIN)/streamtoll demo

clean:
	rm -rf $(VENV) .streamtoll out
