# anycast.edge — build and test entry points. `make help` lists the targets.
#
# Every tier runs inside .venv/ (made by `make setup`); `make test` is what .ci/run runs.

SHELL := /bin/bash
.DEFAULT_GOAL := help
# Tiers touch shared kernel state (bpffs pins, namespaces): never run them concurrently.
.NOTPARALLEL:

VENV   := .venv
PYTHON := $(VENV)/bin/python
TIER   := tools/pytest-tier.sh
# Each pytest tier ends with its 10 slowest tests and files (tests/conftest.py), so that a tier
# grown slow shows where its time goes (CI's limit: `make test` within 45 minutes on 2 cores).
TIMES  := --durations=10 --file-durations=10
LAB    := $(PYTHON) lab/labctl.py
# The venv's tools come first, so ansible-lint and ansible-test find the pinned ansible-core
# (and ansible-lint stops warning that PATH lacks its own folder).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# BPF programs: one object per bpf/*.c, compiled once here and shipped to the hosts.
CLANG       ?= clang
# -mcpu=v3: atomic fetch-and-add (exact rate counters) needs BPF ISA v3 (kernel >= 5.12).
# The kernel's UAPI headers (linux-libc-dev) keep <asm/*.h> under the multiarch folder, which
# clang -target bpf does not search by itself; no glibc header may reach a BPF object.
# Asked of clang itself: a fresh machine has neither cc nor dpkg-architecture (dpkg-dev).
MULTIARCH   := $(shell $(CLANG) -print-multiarch 2>/dev/null)
BPF_CFLAGS  := -O2 -g -target bpf -mcpu=v3 -Wall -Werror -I bpf/include -idirafter /usr/include/$(MULTIARCH)
BPF_HEADERS := $(wildcard bpf/include/*.h)
BPF_OBJECTS := $(sort build/xdp_edge.o $(patsubst bpf/%.c,build/%.o,$(wildcard bpf/*.c)))

.PHONY: help setup test test-lint test-unit test-bpf test-integration test-molecule \
        test-fresh bench lab lab-down bpf-objects print-bpf-cflags clean

help:
	@echo "anycast.edge make targets:"
	@echo "  setup             apt packages + .venv with requirements.txt (no-op when ready)"
	@echo "  test              setup, then every tier below in order, with their times (what CI runs)"
	@echo "  test-fresh        setup.sh + bpf-objects + test-unit in a fresh Debian 12 chroot (root)"
	@echo "  test-lint         ansible-lint (production profile) + ansible-test sanity"
	@echo "  test-unit         tests/unit: pure Python, seconds, no root"
	@echo "  test-bpf          tests/bpf: compiled BPF programs on crafted packets (root)"
	@echo "  test-integration  tests/integration: modules against real kernel state (root)"
	@echo "  test-molecule     molecule/default: site.yml on the QEMU VM lab, verified (root)"
	@echo "  bench             BPF_PROG_TEST_RUN benchmarks (bench/run.py), packets per second (bench/pps.py)"
	@echo "  lab / lab-down    bring the local VM lab up and roll out site.yml / tear it down"
	@echo "  bpf-objects       compile every bpf/*.c into build/*.o"
	@echo "  print-bpf-cflags  the clang flags of bpf-objects (for tests/bench that compile BPF)"
	@echo "  clean             remove build products"

setup:
	tools/setup.sh

# Order matters only for speed of feedback: cheapest tiers first (test-fresh first: a
# missing install step is the first thing a new user meets). tools/test-tiers.sh runs them
# one by one and ends with each tier's time and result; `make --keep-going test` (.ci/run)
# runs every tier even after one failed. test-unit is skipped (and the table says so) when
# test-fresh, which runs it in its fresh root, passed in the same run on the very same files.
TIERS := test-fresh test-lint test-unit test-bpf test-integration test-molecule
test: setup
	@tools/test-tiers.sh $(if $(findstring k,$(firstword -$(MAKEFLAGS))),--keep-going) $(TIERS)

# tools/setup.sh then `make bpf-objects test-unit` in a fresh Debian 12 root (mmdebstrap,
# chroot; cached under ~/.cache/anycast-edge/), as root: catches a missing install step.
test-fresh:
	tools/test-fresh.sh

test-lint: setup
	tools/ansible-lint.sh
	tools/sanity.sh

test-unit: setup
	$(TIER) tests/unit $(TIMES)

test-bpf: setup $(BPF_OBJECTS)
	$(TIER) --needs-root tests/bpf $(TIMES)

test-integration: setup $(BPF_OBJECTS)
	$(TIER) --needs-root tests/integration $(TIMES)

# The whole site.yml on the QEMU VM lab (molecule/default; docs/lab.md), as root. Without a
# scenario there is nothing to run; with one, it runs: never pass without running it.
test-molecule: setup $(BPF_OBJECTS)
	@if ! compgen -G 'molecule/*/molecule.yml' >/dev/null; then \
	    echo "test-molecule: no molecule scenarios yet; nothing to run"; exit 0; \
	fi; \
	ANSIBLE_LAB_MITOGEN=$${ANSIBLE_LAB_MITOGEN:-1} $(LAB) molecule test --all

# Four reports, each against a baseline measured in the same run: the XDP paths (vs
# xdp-filter), packets per second on real frames (vs the kernel's nftables drop and forward; it
# uses namespaces: run it under the kernel-test lock when others test), the rule sync of
# edge_rules, and what a scrape of the POP agent costs.
bench: setup $(BPF_OBJECTS)
	$(PYTHON) bench/run.py
	$(PYTHON) bench/pps.py
	$(PYTHON) bench/rules_sync.py
	$(PYTHON) bench/agent_exporter_cost.py

# The local VM lab (lab/labctl.py; docs/lab.md), as root: build or reuse the image, boot the
# VMs, roll out site.yml, show what runs. A failed rollout leaves the lab up to look at.
lab: setup $(BPF_OBJECTS)
	$(LAB) up
	$(LAB) playbook site.yml || { $(LAB) show; exit 1; }
	$(LAB) show

lab-down: setup
	$(LAB) down

bpf-objects: $(BPF_OBJECTS)

build:
	mkdir -p $@

# The Makefile is a prerequisite so that a change of BPF_CFLAGS rebuilds the objects.
build/%.o: bpf/%.c $(BPF_HEADERS) Makefile | build
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

# The one home of the BPF compile flags: the test fixtures and bench programs that compile
# BPF on their own (tests/conftest.py bpf_cflags, bench/programs.py) ask for them here, so a
# flag a fresh machine needs is added once. The include folder is made absolute for them.
print-bpf-cflags:
	@echo $(BPF_CFLAGS:bpf/include=$(CURDIR)/bpf/include)

clean:
	rm -rf build tests/output
