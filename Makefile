# Entry points for humans and CI. `make test` is what .ci/run runs on a fresh machine.
PYTHON ?= python3

.PHONY: test test-unit lint

# Installs system packages and the project first: the integration tests need real dockerd,
# iptables (nft and legacy) and busybox-static. pytest exit 5 (no tests) fails the target.
test:
	scripts/install-deps.sh
	$(PYTHON) -m pytest

test-unit:
	$(PYTHON) -m pytest tests/unit

# vulture finds dead code; tests/vulture_whitelist.py (under tests/, so read with it) names what
# only frameworks call. Fixtures are called by pytest by name.
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m vulture exporter scripts bench tests --ignore-decorators "@pytest.fixture"

# The demo: a sandboxed Docker daemon with a small linked app, the exporter, Prometheus with the
# alert rules and Alertmanager (as root; installs what it needs). See docs/demo.md.
.PHONY: demo demo-drift demo-restore demo-stop demo-status
demo:
	$(PYTHON) scripts/demo.py up
demo-drift:
	$(PYTHON) scripts/demo.py drift
demo-restore:
	$(PYTHON) scripts/demo.py restore
demo-stop:
	$(PYTHON) scripts/demo.py down
demo-status:
	$(PYTHON) scripts/demo.py status

# Regenerate the golden outputs of the recorded snapshots (tests/fixtures/golden/<snapshot>.*) with
# the real check and collector; review the diff before committing it.
.PHONY: golden
golden:
	$(PYTHON) scripts/regen_golden.py

# Differential test of the evaluator against the kernel (root; netns, no dockerd): N random
# rulesets from SEED on, every flow probed with real packets. See docs/differential.md.
N ?= 200
SEED ?= 1
.PHONY: differential
differential:
	$(PYTHON) -m tests.differential --count $(N) --seed $(SEED) --shrink

# The cost table of docs/performance.md: synthetic hosts measured phase by phase against the floor
# (root: each size's rules go into a throwaway network namespace). Not part of `make test`.
# BENCH_ARGS="--no-kernel" runs without root; BENCH_ARGS="--live 100" against a lab dockerd.
BENCH_ARGS ?= --legacy
.PHONY: bench
bench:
	$(PYTHON) bench/bench_host.py --markdown $(BENCH_ARGS)
