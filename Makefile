# The project's vocabulary: install, run, test, lint, bench, lab.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= etc/mcp2p.ini
# Debian packages the network tests use; installed when we are root and they are missing.
DEBS := smcroute tshark nftables iproute2 ethtool iputils-ping udpcast uftp

.PHONY: install run test lint bench lab system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,lab]' --config-settings editable_mode=compat
	@# twistd finds the drop-in through dropin.cache: build it now, as root may not later.
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/twistd --pidfile= -n mcp2p --config $(CONFIG)

system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq || true) && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "not root or no apt-get: namespace and tshark tests will be skipped (missing:$$missing)"; \
	  fi; \
	fi

test: install system-deps
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check mcp2p tests twisted
	$(BIN)/ruff format --check mcp2p tests twisted
	$(BIN)/mypy mcp2p

BENCH_DIR ?= /tmp/mcp2p-bench
bench: install
	$(BIN)/python -m mcp2p.lab.bench_catalog --dir $(BENCH_DIR) --size 1GiB --clean
	$(BIN)/python -m mcp2p.lab.bench_catalog --dir $(BENCH_DIR) --files 10000 --clean
	$(BIN)/python -m mcp2p.lab.bench_discovery rss --files 10000
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python -m mcp2p.lab.bench_discovery latency --repeat 20; \
	else echo "search latency needs root (network namespaces): skipped"; fi
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python -m mcp2p.lab.bench_transfer --json bench-transfer.json; \
	else echo "transfer benchmark needs root (network namespaces): skipped"; fi

# The lab (issue 5): all four experiments on real daemons in namespaces,
# written to $(LAB_OUT)/REPORT.md with plots and JSON. QUICK=1: the small version.
LAB_OUT ?= lab-report
lab: install system-deps
	@if [ "$$(id -u)" != 0 ]; then echo "make lab needs root (network namespaces)"; exit 2; fi
	$(BIN)/python -m mcp2p.lab all --out $(LAB_OUT) $(if $(filter-out 0,$(QUICK)),--quick,)

clean:
	rm -rf $(VENV) build *.egg-info state share downloads lab-report
