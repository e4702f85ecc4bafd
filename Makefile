# Streaming settlement pipeline: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=

.PHONY: help venv lock up down status logs topics schemas migrate smoke demo bench test test-unit \
        chaos lint clean

help: ## List every target
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the project and its dev tools into $(VENV) (versions from constraints.txt)..."
	@$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## Create the virtualenv and install the project at the versions of constraints.txt (idempotent)

# To change a dependency: install the new version into the virtualenv, run the tests, then lock.
lock: ## Rewrite constraints.txt from the virtualenv's installed versions
	@test -x $(BIN)/pip || { echo "no virtualenv in $(VENV): make venv first"; exit 1; }
	@{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt
	@echo "constraints.txt: $$(grep -vc '^#' constraints.txt) packages pinned"

up: venv ## Start Kafka, the schema registry, PostgreSQL and Prometheus (idempotent)
	@bash deploy/stack.sh up

down: ## Stop the local stack
	@bash deploy/stack.sh down

status: ## Show each service's health, address and memory
	@bash deploy/stack.sh status

logs: ## Tail a service's log: make logs S=kafka
	@bash deploy/stack.sh logs $(S)

topics: venv ## Create the contract's topics (idempotent)
	@$(BIN)/settle topics create

schemas: venv ## Register the Avro contract with the registry (idempotent)
	@$(BIN)/settle schemas register

migrate: venv ## Apply PostgreSQL migrations (idempotent)
	@$(BIN)/settle db migrate

smoke: up topics schemas migrate ## Prove the stack with one payment round trip
	@$(BIN)/settle smoke

demo: venv ## The main job: stack + pipeline up, simulated payments, books audited (DEMO_ARGS=...)
	@$(BIN)/settle demo $(DEMO_ARGS)

bench: up topics schemas migrate ## Benchmarks on the real stack (not part of the tests): .bench/report.md (BENCH_ARGS=--quick)
	@$(BIN)/settle bench all $(BENCH_ARGS)

test-unit: venv ## Unit tests only (pure logic, no services)
	@$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

test: up topics schemas migrate ## Every test against the real stack (starts it if needed); fault scenarios last
	@$(BIN)/pytest tests/unit tests/integration tests/e2e tests/chaos -q $(PYTEST_ARGS)

chaos: up topics schemas migrate ## The fault-injection scenarios alone (they restart services of the stack)
	@$(BIN)/pytest tests/chaos -q -s $(PYTEST_ARGS)

lint: venv ## ruff, mypy and the import contracts
	@$(BIN)/ruff check .
	@$(BIN)/mypy settle settlement schemas infra producers stream_processors sinks api
	@$(BIN)/lint-imports

clean: ## Stop the stack and delete its data (keeps downloaded jars)
	@bash deploy/stack.sh clean
