# evcharge: every target installs what it needs first, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest -p no:cacheprovider
KAFKA_PORT ?= 9092

.PHONY: install system-deps test test-fast lint demo multihost-demo multihost-test bench-test cluster-test chaos-test chaos-random chaos-soak mutants \
	bench gateway-scale screenshot kafka-up kafka-down kafka-status clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use (faketime, the PostgreSQL server), installed when missing.
system-deps:
	@bash scripts/system-deps.sh

# Everything: lint and types, fast tests of the logic, the real broker and PostgreSQL, real
# processes, the chaos scenarios (randomized run included). About 30 minutes on 2 cores.
# Scenarios marked `soak` (a long run), `multihost` (hosts made of network namespaces) and
# `bench` (the bench's sections, run small) have targets of their own.
test: $(STAMP) system-deps lint
	$(PYTEST) -q -m "not soak and not multihost and not bench" --durations=25 tests

# The system across hosts (network namespaces, root): the leader's host cut off under load,
# and a Kafka cluster whose nodes are hosts, one isolated. About 2 minutes.
multihost-test: $(STAMP) system-deps
	$(PYTEST) -q -rA -m multihost tests/test_multihost.py tests/test_netns.py

# The whole system on a 3-node Kafka cluster under broker faults, the rolling restart included.
cluster-test: $(STAMP) system-deps
	$(PYTEST) -q -rA tests/test_cluster_system.py

# Only the pure logic: seconds, no Kafka.
test-fast: $(STAMP)
	$(PYTEST) -q tests/test_unit_*.py tests/test_panel.py

lint: $(STAMP)
	$(BIN)/ruff check evcharge tests bench scripts
	$(BIN)/ruff format --check evcharge tests bench scripts
	$(BIN)/mypy

# SECURE=1: the same demo with TLS, SCRAM and ACLs on its own broker, signed events, enrolled drivers.
demo: $(STAMP)
	$(BIN)/evcharge demo $(if $(SECURE),--secure)

# The system across hosts made of network namespaces (root): the leading central's host cut off
# under load, the standby takes over, the link heals. Everything it built is removed at the end.
multihost-demo: $(STAMP) system-deps
	$(BIN)/python -m evcharge.devtools.multihost

# SECURE=1: every scenario with everything secure (TLS, SCRAM and ACLs on the suite's own broker,
# signed engine events, enrolled drivers); the report says which mode it ran in.
chaos-test: $(STAMP) system-deps
	EVCHARGE_CHAOS_SECURE=$(SECURE) $(PYTEST) -q -m chaos tests/chaos -rA

# Random overlapping failures under load; the seed is printed so a failure can be replayed.
SEED ?=
ROUNDS ?= 10
chaos-random: $(STAMP) system-deps
	EVCHARGE_CHAOS_SEED=$(SEED) EVCHARGE_CHAOS_ROUNDS=$(ROUNDS) $(PYTEST) -q -s tests/chaos/test_random.py

# As many rounds as asked (the time allowed grows with them): make chaos-soak ROUNDS=200
chaos-soak: $(STAMP) system-deps
	EVCHARGE_CHAOS_SEED=$(SEED) EVCHARGE_CHAOS_ROUNDS=$(ROUNDS) $(PYTEST) -q -s tests/chaos/test_random.py

# Targeted mutants of the code that keeps the promises, each in a scratch copy: every one must be killed.
mutants: $(STAMP) system-deps
	$(BIN)/python scripts/mutants.py

# Speed and scale beside the goals: a table, and bench/results.json. BENCH_ARGS=--quick for a shorter run.
BENCH_ARGS ?=
bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The bench's sections run small on real processes: each measures and is reported. A minute or two.
bench-test: $(STAMP) system-deps
	$(PYTEST) -q -m bench tests

# 1,000 OCPP chargers on one gateway process, its SIGKILL and their reconnect storm, zero errors
# (make test runs the same with 100; make bench times it).
gateway-scale: $(STAMP) system-deps
	EVCHARGE_GATEWAY_SCALE=1000 EVCHARGE_GATEWAY_METERING=100 $(PYTEST) -q -s tests/test_gateway_scale.py

# The README's picture of the operator's page, taken during a real charge by the browser test.
screenshot: $(STAMP) system-deps
	EVCHARGE_SCREENSHOT=docs/dashboard.png $(PYTEST) -q tests/test_web_page.py -k real_charge

kafka-up: $(STAMP)
	$(BIN)/evcharge kafka start --port $(KAFKA_PORT)

kafka-down: $(STAMP)
	$(BIN)/evcharge kafka stop --port $(KAFKA_PORT)

kafka-status: $(STAMP)
	$(BIN)/evcharge kafka status --port $(KAFKA_PORT)

clean:
	rm -rf $(VENV) evcharge-state evcharge-runs chaos-report.json .pytest_cache .mypy_cache
