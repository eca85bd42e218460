# The two commands the README opens with, plus the system packages they need.
#   make demo   main job on an embedded shard (no servers to start)
#   make test   the whole test suite
# Everything builds with --release so RocksDB's C++ is compiled for one profile only.

SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CARGO ?= cargo
TARGET := $(or $(CARGO_TARGET_DIR),target)
TEST_LOG := $(TARGET)/test-output.log
# Python for the tests that drive the service from a client generated from proto/.
VENV := .venv
PYTHON := $(abspath $(VENV))/bin/python

.PHONY: demo test bench deps pydeps lint

demo: deps
	$(CARGO) build --release --workspace --bins
	$(TARGET)/release/paramdb demo

# cargo prints one summary per test binary (the last ones are empty doc-test runs), so the
# run ends with the total over all of them.
# `cargo test` builds a package's binaries only for that package's own integration tests, so the
# `paramdb` binary the tests start as servers is built first.
test: deps pydeps
	mkdir -p $(dir $(TEST_LOG))
	$(CARGO) build --release --workspace --bins
	set -o pipefail; PARAMDB_PYTHON=$(PYTHON) $(CARGO) test --release --workspace 2>&1 | tee $(TEST_LOG)
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f; exit (p == 0 || f > 0)}' $(TEST_LOG)

# Every cargo command selects the whole workspace (`--workspace --bench NAME`): with one package
# only, host build-dependencies unify to other features and librocksdb-sys is built again.
bench: deps pydeps
	@command -v redis-server >/dev/null || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
	$(CARGO) build --release --workspace
	$(CARGO) bench --workspace --bench store
	$(CARGO) bench --workspace --bench loopback
	$(CARGO) bench --workspace --bench linreg
	$(CARGO) bench --workspace --bench export
	PARAMDB_PYTHON=$(PYTHON) $(CARGO) bench --workspace --bench word2vec
	$(CARGO) bench --workspace --bench ngram_count       # about 25 minutes; needs ../shared/data for its IMDb part and about 60 GB of free disk
	$(CARGO) bench --workspace --bench ngram_lm          # about 90 minutes; needs about 8 GB of free disk
	$(CARGO) bench --workspace --bench vocab_scale -- --sizes 1000000,3000000,10000000   # about 8 GB of free disk
	$(CARGO) bench --workspace --bench bounded_memory   # needs about 6 GB of free disk
	$(CARGO) bench --workspace --bench soak              # 10 minutes
	tests/benches/backup.sh                              # about 5 minutes; about 45 GB of free disk
	BENCH_DIR=/var/tmp/paramdb-lifecycle-long tests/benches/lifecycle_long.sh   # about 20 minutes; needs ../shared/data
	PARAMDB_KILLS=1000 $(CARGO) test --release --workspace --test it kill_loop -- --nocapture

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# libclang: bindgen for librocksdb-sys; protoc: the proto crate. Installed only when missing.
deps:
	@if ! ldconfig -p | grep -q 'libclang-[0-9.]*\.so ' || ! command -v protoc >/dev/null; then \
		echo "installing libclang-dev and protobuf-compiler"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev protobuf-compiler >/dev/null; \
	fi

# A virtual environment with the Python packages the tests use (from PyPI), and paramdb's own
# Python client (client/python) installed into it with pip, rebuilt each run so its stubs
# match proto/.
pydeps:
	@[ -x $(PYTHON) ] || python3 -m venv $(VENV)
	@$(PYTHON) -c "import grpc_tools, grpc_health, grpc_reflection, gensim, safetensors, kubernetes_validate, setuptools, kenlm" 2>/dev/null || \
		$(PYTHON) -m pip install -q grpcio grpcio-tools grpcio-health-checking grpcio-reflection gensim safetensors kubernetes-validate setuptools kenlm
	@$(PYTHON) -m pip install -q --no-build-isolation ./client/python
