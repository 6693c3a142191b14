# The project's vocabulary: install, run, test, lint, bench, lab.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= etc/mcp2p.ini
# Debian packages the network tests use; installed when we are root and they are missing.
DEBS := smcroute tshark nftables iproute2 ethtool iputils-ping udpcast uftp chromium bird2

.PHONY: install run demo test lint bench lab system-deps build-deps clean install-system check-tracked

# The virtualenv is made here, on this machine, at this path: it is never tracked
# (its scripts name their interpreter by absolute path).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Twisted caches what a plugin directory holds (dropin.cache) beside it: build the
# caches of twistd's drop-ins and of mcp2p's own plugin package while we may write there.
DROPIN_CACHES := import mcp2p.plugins; from twisted.plugin import IPlugin, getPlugins; \
  list(getPlugins(IPlugin)); list(getPlugins(IPlugin, mcp2p.plugins))

# The compiled helper (mcp2p/_speedups.c: the CN's per-datagram checks) needs a C
# compiler and Python's and OpenSSL's headers. Debian's are installed when missing and
# we are root; otherwise the install goes on and mcp2p uses its pure-Python fallback.
BUILD_DEBS := gcc libssl-dev
PY_HEADERS := import os, sysconfig; \
  raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))

build-deps:
	@missing=""; command -v gcc >/dev/null || missing="$$missing gcc"; \
	[ -e /usr/include/openssl/evp.h ] || missing="$$missing libssl-dev"; \
	$(PYTHON) -c '$(PY_HEADERS)' || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages to build mcp2p._speedups:$$missing"; \
	    (apt-get update -qq || true) && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || \
	    echo "could not install$$missing: mcp2p will use its pure-Python scan"; \
	  else \
	    echo "missing$$missing (not root or no apt-get): mcp2p will use its pure-Python scan"; \
	  fi; \
	fi

# Editable: the lab, which the product's wheel leaves out, runs from this tree.
$(STAMP): $(BIN)/python setup.cfg setup.py pyproject.toml mcp2p/_speedups.c | build-deps
	$(BIN)/python -m pip install -q -e '.[test,lab]' --config-settings editable_mode=compat
	@# twistd finds the drop-in through dropin.cache: build it now, as root may not later.
	$(BIN)/python -c "$(DROPIN_CACHES)"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/twistd --pidfile= -n mcp2p --config $(CONFIG)

# Two nodes on loopback, a file shared by one and fetched by the other; both keep
# running (Ctrl-C stops them) so that the commands it prints can be tried.
demo: install
	$(BIN)/python -m mcp2p.demo

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

# The receive path's tests run twice: on the compiled helpers (scan, accept,
# copy_run, where they were built) and on the pure-Python fallback that a machine
# without a compiler runs.
FALLBACK_TESTS := tests/transfer/test_scan.py tests/transfer/test_receiver.py \
  tests/transfer/test_receiver_lists.py tests/transfer/test_receive_batch.py \
  tests/core/test_blockcode.py tests/transfer/test_fetch_loopback.py

test: install system-deps check-tracked
	$(BIN)/python -m pytest -q
	MCP2P_PURE_PYTHON=1 $(BIN)/python -m pytest -q $(FALLBACK_TESTS)

# Fails with one line when git tracks a virtualenv, build output or caches.
check-tracked:
	@bash .ci/check-tracked

lint: install
	$(BIN)/ruff check mcp2p tests twisted
	$(BIN)/ruff format --check mcp2p tests twisted
	$(BIN)/mypy mcp2p

# make bench: about 50 minutes on 2 cores (the transfer matrix is 40 of them).
# make bench QUICK=1: about 4 minutes (smaller files, fewer receivers; 3 min 52 s measured).
# It ends with one short table of the headline figures (mcp2p.lab.bench_summary):
# µs of CPU per packet (SN, CN, beside uftpd and udp-receiver), the unshaped
# 1-CN goodput beside udpcast and UFTP, and the SN's RSS against file size and
# sessions; their JSON goes to $(BENCH_JSON).
BENCH_DIR ?= /tmp/mcp2p-bench
BENCH_JSON ?= /tmp/mcp2p-bench-results
QUICK ?= 0
ifeq ($(filter-out 0,$(QUICK)),)
BENCH_SIZE := 1GiB
BENCH_FILES := 10000
BENCH_REPEAT := 20
BENCH_TRANSFER :=
BENCH_CPU :=
BENCH_SN :=
BENCH_UNSHAPED := --size-mib 100 --reps 3
BENCH_SAYS := the full benchmark: about 50 minutes on 2 cores (make bench QUICK=1: about 4)
else
BENCH_SIZE := 128MiB
BENCH_FILES := 1000
BENCH_REPEAT := 5
BENCH_TRANSFER := --quick
BENCH_CPU := --quick
BENCH_SN := --sizes 256M,1G --sessions 1,5 --seconds 2 --cpu-size 1G
BENCH_UNSHAPED := --size-mib 32 --reps 1
BENCH_SAYS := the quick benchmark: about 4 minutes on 2 cores
endif
bench: install system-deps
	@echo "make bench: $(BENCH_SAYS)"
	@rm -rf $(BENCH_JSON) && mkdir -p $(BENCH_JSON)
	$(BIN)/python -m mcp2p.lab.bench_catalog --dir $(BENCH_DIR) --size $(BENCH_SIZE) --clean
	$(BIN)/python -m mcp2p.lab.bench_catalog --dir $(BENCH_DIR) --files $(BENCH_FILES) --clean
	$(BIN)/python -m mcp2p.lab.bench_discovery rss --files $(BENCH_FILES)
	$(BIN)/python -m mcp2p.lab.bench_sn $(BENCH_SN) --json $(BENCH_JSON)/bench-sn.json \
	  || echo "bench_sn: FAILED"
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python -m mcp2p.lab.bench_discovery latency --repeat $(BENCH_REPEAT); \
	else echo "search latency needs root (network namespaces): skipped"; fi
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python -m mcp2p.lab.bench_transfer $(BENCH_TRANSFER) --json bench-transfer.json; \
	else echo "transfer benchmark needs root (network namespaces): skipped"; fi
	@if [ "$$(id -u)" = 0 ]; then \
	  $(BIN)/python -m mcp2p.lab.bench_cpu $(BENCH_CPU) --json $(BENCH_JSON)/bench-cpu.json \
	    || echo "bench_cpu: FAILED (a row says why)"; \
	  $(BIN)/python -m mcp2p.lab run unicast --cns 1 --losses 0 --link-mbit 2000 --send-mbit 2000 \
	    --tools mcp2p-multicast,udpcast,uftp --headline-mib 0 $(BENCH_UNSHAPED) \
	    --out $(BENCH_JSON)/unshaped || echo "unshaped 1-CN run: FAILED"; \
	else echo "CPU per packet and the unshaped goodput need root (network namespaces): skipped"; fi
	@$(BIN)/python -m mcp2p.lab.bench_summary $(BENCH_JSON)

# The lab (issue 5): all four experiments on real daemons in namespaces,
# written to $(LAB_OUT)/REPORT.md with plots and JSON. QUICK=1: the small version.
LAB_OUT ?= lab-report
lab: install system-deps
	@if [ "$$(id -u)" != 0 ]; then echo "make lab needs root (network namespaces)"; exit 2; fi
	$(BIN)/python -m mcp2p.lab all --out $(LAB_OUT) $(if $(filter-out 0,$(QUICK)),--quick,)

# A system service (root): mcp2p installed (not editable) into $(PREFIX), the
# mcp2p user, /etc/mcp2p/mcp2p.ini when missing, the systemd unit. Run it again to
# upgrade; the config and /var/lib/mcp2p are kept.
PREFIX ?= /opt/mcp2p
SYSTEMD_DIR ?= /etc/systemd/system
# The service's user must be able to read the interpreter: the distribution's, not
# one under root's home (pyenv and the like).
SYSTEM_PYTHON ?= $(firstword $(wildcard /usr/bin/python3) $(PYTHON))
install-system:
	@if [ "$$(id -u)" != 0 ]; then echo "make install-system needs root"; exit 2; fi
	$(SYSTEM_PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/python -m pip install -q --upgrade pip
	$(PREFIX)/bin/python -m pip install -q --upgrade .
	$(PREFIX)/bin/python -I -c "$(DROPIN_CACHES)"
	id -u mcp2p >/dev/null 2>&1 || useradd --system --home-dir /var/lib/mcp2p --no-create-home \
	  --shell /usr/sbin/nologin --user-group mcp2p
	@runuser -u mcp2p -- $(PREFIX)/bin/python -c pass 2>/dev/null || { echo "make install-system: \
	the mcp2p user cannot run $(PREFIX)/bin/python (made from $(SYSTEM_PYTHON)); \
	give a system interpreter: make install-system SYSTEM_PYTHON=/usr/bin/python3.11"; exit 2; }
	install -d -m 0755 /etc/mcp2p
	[ -e /etc/mcp2p/mcp2p.ini ] || $(PREFIX)/bin/mcp2p config --example > /etc/mcp2p/mcp2p.ini
	sed 's|/opt/mcp2p/|$(PREFIX)/|g' etc/mcp2p.service > $(SYSTEMD_DIR)/mcp2p.service
	ln -sf $(PREFIX)/bin/mcp2p /usr/local/bin/mcp2p
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; \
	  echo "installed: systemctl enable --now mcp2p; journalctl -u mcp2p -f"; \
	else echo "installed; systemd is not running here, so nothing was started"; fi

clean:
	rm -rf $(VENV) build *.egg-info state share downloads lab-report demo
	rm -f mcp2p/_speedups*.so
