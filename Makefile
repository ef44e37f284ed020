# Every install step lives here: `make test` and `make demo` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install system-deps test check demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

# Tools the tests use as a person would: pdftotext/pdftoppm read the PDFs, headless Chromium
# (driven through chromedriver) opens the live page.
system-deps:
	@command -v pdftotext >/dev/null && command -v pdftoppm >/dev/null && command -v chromium >/dev/null && \
	  command -v chromedriver >/dev/null || \
	  { command -v apt-get >/dev/null && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq poppler-utils chromium chromium-driver >/dev/null) || \
	    echo "install poppler-utils, chromium and chromium-driver for the document and page tests"; }

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff check metering billing streamtoll tests
	$(BIN)/ruff format --check metering billing streamtoll tests
	$(BIN)/mypy
	$(BIN)/lint-imports

demo: $(STAMP)
	$(BIN)/streamtoll --log-level WARNING demo

# Benchmarks, on demand (not in `make test`): each prints its figures and the baseline it is
# compared with, measured in the same run. Billing and API use STREAMTOLL_DATABASE_URL's server
# (or an embedded one) and create a fresh database per run.
bench: $(STAMP)
	$(BIN)/streamtoll --log-level WARNING bench ingest --events 1000000
	$(BIN)/streamtoll --log-level WARNING bench ingest --events 1000000 --workers 2
	$(BIN)/streamtoll --log-level WARNING bench memory --series 100000
	$(BIN)/streamtoll --log-level WARNING bench billing --accounts 1000 --clients 20
	$(BIN)/streamtoll --log-level WARNING bench api --clients 1000

clean:
	rm -rf $(VENV) .streamtoll out
