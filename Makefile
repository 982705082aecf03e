# The two commands: `make demo` runs everything locally; `make test` runs the suite.
# Each first installs the programs it needs (meter/system_needs.py) or says what to install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test fuzz fuzz-admin lint format mypy bench admin-bench ledger-bench portal-bench recharge-bench close-bench pdf-bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m meter.system_needs demo
	$(BIN)/meter dev

test: install
	$(BIN)/python -m meter.system_needs test
	$(BIN)/pytest -q

# The admin API against its OpenAPI document, longer than in `make test` (25 examples).
ADMIN_FUZZ_EXAMPLES ?= 1000
fuzz: install
	ADMIN_FUZZ_EXAMPLES=$(ADMIN_FUZZ_EXAMPLES) $(BIN)/pytest -q -s --timeout=0 \
		tests/test_admin_openapi_conformance.py

fuzz-admin: fuzz  # the target's former name

lint: install
	$(BIN)/ruff check meter gateway ledger admin portal tests loadtests
	$(BIN)/ruff format --check meter gateway ledger admin portal tests loadtests

format: install
	$(BIN)/ruff format meter gateway ledger admin portal tests loadtests
	$(BIN)/ruff check --fix meter gateway ledger admin portal tests loadtests

mypy: install
	$(BIN)/mypy

bench: install
	$(BIN)/python -c 'import locust, matplotlib' 2>/dev/null || $(BIN)/pip install -q -e '.[load]'
	$(BIN)/python -m meter.system_needs bench
	$(BIN)/python -m loadtests.bench $(BENCH_ARGS)

# The admin API's CPU per request; ADMIN_BENCH_ARGS="--compare /path/to/old/checkout" for an A/B.
admin-bench: install
	$(BIN)/python -m meter.system_needs admin-bench
	$(BIN)/python -m loadtests.admin_bench $(ADMIN_BENCH_ARGS)

ledger-bench: install
	$(BIN)/python -m meter.system_needs demo
	$(BIN)/python -m loadtests.ledger_bench

# The portal's pages with 100 signed-in sessions on an account of 10 million usage events.
portal-bench: install
	$(BIN)/python -m meter.system_needs demo
	$(BIN)/python -m loadtests.portal_bench $(PORTAL_BENCH_ARGS)

# Auto-recharge under gateway traffic: crossing to credit, gateway CPU per call on / off.
recharge-bench: install
	$(BIN)/python -m meter.system_needs recharge-bench
	$(BIN)/python -m loadtests.recharge_bench $(RECHARGE_BENCH_ARGS)

# The close of a billing period for 100,000 accounts, with 1 and 2 closers; the checks of every invoice.
CLOSE_BENCH_ARGS ?= --workers 1 2
close-bench: install
	$(BIN)/python -m meter.system_needs demo
	$(BIN)/python -m loadtests.close_bench $(CLOSE_BENCH_ARGS)

# An invoice's PDF (weasyprint): ms a render with 5 and 50 lines, and the first, cold.
pdf-bench: install
	$(BIN)/python -m meter.system_needs demo
	$(BIN)/python -m loadtests.pdf_bench $(PDF_BENCH_ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
