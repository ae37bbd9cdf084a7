# swarmnet-overlay: build, package and test.
#
#   make plugin     build/plugin/{config.json,rootfs/} (the managed plugin bundle)
#   make install    docker plugin create + enable on the local dockerd (replaces an old one)
#   make push       create the plugin as $(REGISTRY)/$(PLUGIN_NAME) and docker plugin push it
#   make demo       deps + install + two containers pinging over a swarmnet network
#   make venv       .venv with what building needs (made by any target that runs Python)
#   make test       every test suite (after `make deps`); test-unit, test-integration,
#                   test-fault, test-kernel, test-kernellab, test-kernellab-swarm, test-e2e,
#                   test-lab one at a time
#   make bench      the benchmarks of docs/benchmarks.md: bench-overlay (multi-host lab, both
#                   drivers), then bench-lb (service VIP load balancing, under kernel-lab);
#                   bench-datapath runs the data-path comparison alone (issue 17)
#   make bench-scale the control plane at 10 to 1,000 simulated nodes on one real etcd
#   make bench-calls plugin calls on one quiet host, with the worker's CPU per call
#
# The docker client is $(DOCKER) (the 20.10 client that matches the daemon); it
# honours DOCKER_HOST, so `DOCKER_HOST=unix:///path/docker.sock make install`
# works against any dockerd.

DOCKER      ?= /usr/bin/docker
VENV        ?= .venv
PYTHON      ?= $(VENV)/bin/python
KERNEL_LAB  ?= ../shared/kernel-lab
BASE        ?= python:3.11-slim-bookworm
PLUGIN_NAME ?= swarmnet-overlay
PLUGIN_TAG  ?= latest
PLUGIN      ?= $(PLUGIN_NAME):$(PLUGIN_TAG)
# Extra `docker plugin set` arguments for make install, e.g. PLUGIN_SETTINGS="SCOPE=local"
PLUGIN_SETTINGS ?=
# Host directories behind the plugin's `state` and `run` mounts (make install prepares them).
STATE_DIR   ?= /var/lib/swarmnet
RUN_DIR     ?= /run/swarmnet
# dockerd's exec root: containers' namespaces, which load balancing programs (docker-run mount).
DOCKER_EXEC_ROOT ?= /var/run/docker
REGISTRY    ?= 127.0.0.1:5000
BUILD_IMAGE ?= swarmnet-overlay-rootfs:build
# Where the debootstrap'd base rootfs tarball is cached (made once).
BASE_CACHE  ?= build/base
PYTEST_ARGS ?=

BUILD   := build
WHEELS  := $(BUILD)/wheels
CONTEXT := $(BUILD)/context
BUNDLE  := $(BUILD)/plugin
SOURCES := $(shell find core plugin driver ipam -name '*.py' 2>/dev/null) pyproject.toml

export DOCKER PYTHON BASE_CACHE

.PHONY: all deps venv demo wheels base-image plugin install uninstall push host-prep \
        test test-unit test-integration test-fault test-kernel test-kernellab \
        test-kernellab-swarm test-e2e test-lab \
        lab-up lab-down bench bench-overlay bench-lb bench-calls bench-scale bench-datapath lint clean \
        distclean

all: plugin

# System packages (apt) and the project in $(VENV). Idempotent.
deps:
	scripts/deps.sh

# Every target that runs $(PYTHON) depends on this, so that `make install` (or lint,
# test-*, bench) works as a fresh machine's first command: it creates $(VENV) with only
# what building needs (scripts/deps.sh --venv), never the test packages or docker.
# deps.sh marks the venv complete only after pip succeeded, so a half-made one is redone.
venv:
	@[ "$(PYTHON)" != "$(VENV)/bin/python" ] || [ -f $(VENV)/.deps-ok ] || scripts/deps.sh --venv

demo: deps
	scripts/demo.sh

# --- wheels: built on the host, so `docker build` never reaches a package index ---

# Dependencies change rarely: resolve them once per pyproject.toml.
$(WHEELS)/.deps: pyproject.toml | venv
	@mkdir -p $(WHEELS)
	scripts/wheels.sh deps $(WHEELS)
	@touch $@

# The project's own wheel follows every source change.
$(WHEELS)/.project: $(WHEELS)/.deps $(SOURCES) | venv
	scripts/wheels.sh project $(WHEELS)
	@touch $@

wheels: $(WHEELS)/.project

# --- base image and plugin rootfs ---

base-image:
	scripts/base-image.sh $(BASE) $(BASE_CACHE)

# The bundle is rebuilt only when an input changed, so `make install` on another
# dockerd reuses it without touching any image.
$(BUILD)/.plugin: $(WHEELS)/.project Dockerfile config.json scripts/base-image.sh scripts/bundle.sh
	scripts/base-image.sh $(BASE) $(BASE_CACHE)
	@rm -rf $(CONTEXT) && mkdir -p $(CONTEXT)
	cp -a $(WHEELS) $(CONTEXT)/wheels && rm -f $(CONTEXT)/wheels/.deps $(CONTEXT)/wheels/.project
	DOCKER_BUILDKIT=0 $(DOCKER) build -q --build-arg BASE=$(BASE) -t $(BUILD_IMAGE) \
		-f Dockerfile $(CONTEXT)
	scripts/bundle.sh $(BUILD_IMAGE) config.json $(BUNDLE)
	@touch $@

plugin: $(BUILD)/.plugin

# --- install on the local dockerd ---

host-prep:
	scripts/host-prep.sh $(STATE_DIR) $(RUN_DIR) $(DOCKER_EXEC_ROOT)

install: plugin host-prep
	scripts/install.sh $(PLUGIN) $(BUNDLE) state.source=$(STATE_DIR) run.source=$(RUN_DIR) \
		docker-run.source=$(DOCKER_EXEC_ROOT) $(PLUGIN_SETTINGS)

uninstall:
	-$(DOCKER) plugin disable -f $(PLUGIN)
	-$(DOCKER) plugin rm -f $(PLUGIN)

# docker plugin push needs the registry in the plugin's name.
push: plugin
	scripts/install.sh --no-enable $(REGISTRY)/$(PLUGIN) $(BUNDLE)
	$(DOCKER) plugin push $(REGISTRY)/$(PLUGIN)

# --- tests ---

lint: venv
	$(PYTHON) -m ruff check core plugin driver ipam testbed tests bench
	$(PYTHON) -m mypy

test-unit: venv
	$(PYTHON) -m pytest -q tests/unit tests/contract $(PYTEST_ARGS)

# Real etcd servers on loopback, started by the tests.
test-integration: venv
	$(PYTHON) -m pytest -q tests/integration $(PYTEST_ARGS)

# Faults (docs/reliability.md): fuzzed bodies, kill -9 at every store write, hundreds
# of lifecycles on the real kernel (root), etcd failover, security refusals. 2-4 min.
test-fault: venv
	$(PYTHON) -m pytest -q tests/fault $(PYTEST_ARGS)

# Real network namespaces on this machine's kernel (root).
test-kernel: venv
	$(PYTHON) -m pytest -q -m kernel tests/kernel tests/kernellab $(PYTEST_ARGS)

# IPsec needs ESP, which this machine's kernel lacks: these run under a stock
# Debian kernel in ../shared/kernel-lab. Not set up is a failure, never a skip.
test-kernellab: venv
	@if [ ! -x $(KERNEL_LAB)/run ]; then \
		echo "FAIL: kernel-lab not found at $(KERNEL_LAB); the IPsec tests cannot run" >&2; exit 1; fi
	@$(KERNEL_LAB)/setup >/tmp/swarmnet-kernel-lab-setup.log 2>&1 || { \
		echo "FAIL: kernel-lab could not be set up ($(KERNEL_LAB)/setup):" >&2; \
		tail -20 /tmp/swarmnet-kernel-lab-setup.log >&2; exit 1; }
	KERNEL_LAB_QUIET=1 $(KERNEL_LAB)/run --timeout 1500 -- \
		$(abspath $(PYTHON)) -m pytest -q -m kernellab tests/kernellab $(PYTEST_ARGS)

# Service VIP load balancing needs IPVS: a real dockerd in swarm mode with the managed
# plugin, inside ONE kernel-lab boot (tests/vmswarm). The bundle is built on the host
# first (a throwaway dockerd when build/plugin is stale), as build/plugin.tar.
test-kernellab-swarm: venv
	@if [ ! -x $(KERNEL_LAB)/run ]; then \
		echo "FAIL: kernel-lab not found at $(KERNEL_LAB); the load-balancing tests cannot run" >&2; exit 1; fi
	@$(KERNEL_LAB)/setup >/tmp/swarmnet-kernel-lab-setup.log 2>&1 || { \
		echo "FAIL: kernel-lab could not be set up ($(KERNEL_LAB)/setup):" >&2; \
		tail -20 /tmp/swarmnet-kernel-lab-setup.log >&2; exit 1; }
	$(PYTHON) -m tests.vmswarm.build
	KERNEL_LAB_QUIET=1 $(KERNEL_LAB)/run --timeout 900 -- \
		$(abspath $(PYTHON)) -m pytest -q -m kernellab tests/vmswarm $(PYTEST_ARGS)

# Starts its own dockerds (each in its own network namespace), builds the bundle
# with the first one (make plugin), installs it; needs root. See tests/e2e/README.md.
test-e2e: venv
	$(PYTHON) -m pytest -q -m e2e tests/e2e $(PYTEST_ARGS)

# The multi-host lab: 3-node swarms on network namespaces, with etcd (root).
test-lab: venv
	$(PYTHON) -m pytest -q -m e2e tests/lab $(PYTEST_ARGS)

test: deps lint test-unit test-integration test-fault test-kernel test-kernellab test-kernellab-swarm \
	test-e2e test-lab

# Issue 6: swarmnet-overlay vs Docker's overlay on its own 3-node lab (docs/benchmarks.md).
# QUICK=1 for fewer runs (about 4.5 min); BENCH_ARGS for any `python -m bench.run` flag.
BENCH_ARGS ?=
bench: bench-overlay bench-lb

bench-overlay: venv
	$(PYTHON) -m bench.run $(if $(QUICK),--quick) $(BENCH_ARGS)

# Issue 17: the data path alone (ours, ours with tuning off, Docker's overlay, underlay,
# alternating; TCP, UDP 64/1400 B, ping), rank test per row; build/bench/datapath.{json,md,png}.
# QUICK=1: 3 rounds (about 4 min); DATAPATH_ARGS for any `python -m bench.datapath` flag.
DATAPATH_ARGS ?=
bench-datapath: venv
	$(PYTHON) -m bench.datapath $(if $(QUICK),--rounds 3) $(DATAPATH_ARGS)

# Issue 10: service VIP load balancing (IPVS, so under kernel-lab, set up as for
# test-kernellab): VIP vs direct connects, record-to-sandbox delay, 50 services x 10
# sandboxes. About 8 min under TCG here, QUICK=1 about 3; LB_BENCH_ARGS for any
# `python -m bench.lb` flag. Table on stdout, build/bench/lb.json.
LB_BENCH_ARGS ?=
bench-lb: venv
	@if [ ! -x $(KERNEL_LAB)/run ]; then \
		echo "FAIL: kernel-lab not found at $(KERNEL_LAB); the load-balancing bench cannot run" >&2; exit 1; fi
	@$(KERNEL_LAB)/setup >/tmp/swarmnet-kernel-lab-setup.log 2>&1 || { \
		echo "FAIL: kernel-lab could not be set up ($(KERNEL_LAB)/setup):" >&2; \
		tail -20 /tmp/swarmnet-kernel-lab-setup.log >&2; exit 1; }
	KERNEL_LAB_QUIET=1 $(KERNEL_LAB)/run --timeout 1500 -- \
		$(abspath $(PYTHON)) -m bench.lb $(if $(QUICK),--quick) $(LB_BENCH_ARGS)

# Issue 16: plugin calls on one quiet host (`swarmnet serve` in a scratch namespace, no
# dockerd): calls/s, p50, p99 and the worker's CPU per call, c=1 and c=16 (root; ~1 min).
bench-calls: venv
	$(PYTHON) -m bench.calls_local $(CALLS_BENCH_ARGS)

# Issue 16: the control plane at scale (docs/benchmarks.md, "Control plane at scale"):
# 10, 100, 300 and 1,000 simulated nodes (the real driver service and etcd control plane on
# fake kernels, in 2 processes) against one real etcd on loopback; no root, no Docker.
# QUICK=1: 10 and 100 nodes, shorter phases. SCALE_ARGS for any `python -m bench.scale_sim`
# flag (--sizes, --churn-rate, ...). Table on stdout, build/bench/scale_sim.json,
# docs/scale-sim-lag.png. Run it alone: it loads both cores.
SCALE_ARGS ?=
bench-scale: venv
	$(PYTHON) -m bench.scale_sim $(if $(QUICK),--quick) $(SCALE_ARGS)

# --- the multi-host lab by hand ---

lab-up: venv  ## e.g. make lab-up LAB_ARGS="--nodes 3 --plugin build/plugin"
	$(PYTHON) -m testbed.multihost up $(LAB_ARGS)

lab-down: venv
	$(PYTHON) -m testbed.multihost down $(LAB_ARGS)

clean:
	rm -rf $(CONTEXT) $(BUNDLE) $(BUILD)/.plugin $(BUILD)/lib $(BUILD)/bdist.* *.egg-info
	-$(DOCKER) rmi -f $(BUILD_IMAGE) >/dev/null 2>&1

# Also drops the cached debootstrap tarball and wheels.
distclean: clean
	rm -rf $(BUILD)
