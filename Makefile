# evcharge: every target installs what it needs first, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest
KAFKA_PORT ?= 9092

.PHONY: install test test-fast lint demo chaos-test chaos-random bench kafka-up kafka-down kafka-status clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Everything: fast unit tests, the real broker, real processes, and the chaos scenarios.
test: $(STAMP)
	$(PYTEST) -q -p no:cacheprovider tests

# Only the pure logic: seconds, no Kafka.
test-fast: $(STAMP)
	$(PYTEST) -q -p no:cacheprovider tests/test_unit_*.py tests/test_panel.py

lint: $(STAMP)
	$(BIN)/ruff check evcharge tests bench
	$(BIN)/ruff format --check evcharge tests bench

demo: $(STAMP)
	$(BIN)/evcharge demo

chaos-test: $(STAMP)
	$(PYTEST) -q -p no:cacheprovider -m chaos tests/chaos -rA

# Random kills and freezes under load; the seed is printed so a failure can be replayed.
SEED ?=
ROUNDS ?= 10
chaos-random: $(STAMP)
	EVCHARGE_CHAOS_SEED=$(SEED) EVCHARGE_CHAOS_ROUNDS=$(ROUNDS) $(PYTEST) -q -s -p no:cacheprovider tests/chaos/test_random.py

# Speed and scale beside the goals: a table, and bench/results.json. BENCH_ARGS=--quick for ~3 minutes.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

kafka-up: $(STAMP)
	$(BIN)/evcharge kafka start --port $(KAFKA_PORT)

kafka-down: $(STAMP)
	$(BIN)/evcharge kafka stop --port $(KAFKA_PORT)

kafka-status: $(STAMP)
	$(BIN)/evcharge kafka status --port $(KAFKA_PORT)

clean:
	rm -rf $(VENV) evcharge-state evcharge-runs chaos-report.json .pytest_cache
