# baton: `make demo` runs the main job, `make test` runs every test, `make torture` the long
# torture suite (docs/reliability.md).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
BATON := target/release/baton
DEMO  := demo-out

.PHONY: all build demo test unit torture bench bench-tools bench-quick dist clean venv tools fuzz gpu-check

all: build

build:
	cargo build --release

# Python tools the tests need (moto's S3 server; torch, Lightning and scikit-learn for
# tests/torch.rs), in a local virtualenv. torch alone is about 1.5 minutes and 5 GB.
$(VENV)/.installed: requirements-test.txt requirements-torch.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt -r requirements-torch.txt
	touch $@

venv: $(VENV)/.installed

# A real SVG renderer for the timeline checks (Debian's librsvg2-bin).
tools:
	@command -v rsvg-convert >/dev/null || { \
	  echo "installing librsvg2-bin (rsvg-convert) for the SVG checks"; \
	  (apt-get install -y -q librsvg2-bin >/dev/null 2>&1 || \
	   { apt-get update -q >/dev/null && apt-get install -y -q librsvg2-bin >/dev/null; }) ; }

# Local preemption simulation of the example trainer on the default (directory)
# store: evictions over mixed simulated slots, --verify, and a timeline picture.
demo: build tools
	bash examples/demo.sh $(BATON) $(DEMO)

test: venv tools
	BATON_TEST_MOTO=$(abspath $(VENV))/bin/moto_server cargo test -- --test-threads 4

unit:
	cargo test --lib --bins

# The torture suite, long (docs/reliability.md): 10x the seeded trials of `make test`'s
# short run, R8's 50 runs evicted for 10 minutes, the stalled-store check; then R4's
# fuzzing when a `fuzz` target exists. Counts: torture-out/results.txt, log: torture-out/log.txt.
# Replay: BATON_TORTURE_SEED=<base seed printed> make torture.
TORTURE_OUT := torture-out
torture: venv
	@mkdir -p $(TORTURE_OUT) && rm -f $(TORTURE_OUT)/results.txt
	BATON_TEST_MOTO=$(abspath $(VENV))/bin/moto_server BATON_TORTURE_LONG=1 \
	BATON_TORTURE_TRIALS=$${BATON_TORTURE_TRIALS:-10} \
	BATON_TORTURE_R8_RUNS=$${BATON_TORTURE_R8_RUNS:-50} BATON_TORTURE_R8_SECONDS=$${BATON_TORTURE_R8_SECONDS:-600} \
	BATON_TORTURE_RESULTS=$(abspath $(TORTURE_OUT))/results.txt \
	cargo test --test tests -- --test-threads 2 --nocapture torture 2>&1 | tee $(TORTURE_OUT)/log.txt; \
	status=$${PIPESTATUS[0]}; echo; cat $(TORTURE_OUT)/results.txt 2>/dev/null; exit $$status
	@if $(MAKE) -n fuzz >/dev/null 2>&1; then $(MAKE) fuzz; else echo "no fuzz target: R4 skipped"; fi

# Everything measured (tens of minutes): baton on the directory store and s3s-fs
# (docs/benchmarks.md), beside the usual tools with latency, flush and trainer-throughput
# rows (docs/benchmarks-tools.md), goodput under preemption, and dataset pulls beside
# aws s3 sync and rclone (bench-out/data.md; docs/benchmarks-data.md says how to read it).
bench: build venv
	bash bench/run.sh
	bash bench/compare.sh
	bash bench/goodput.sh
	mkdir -p bench-out && bash bench/data.sh | tee bench-out/data.md

# baton beside aws, tar|zstd|aws, rclone and restic on one s3s-fs server (docs/benchmarks-tools.md).
bench-tools: build venv
	bash bench/compare.sh

# Day-to-day (a few minutes): 256 MiB, one repetition, baton beside rclone and restic, 20 ms
# of added round trip, the flush and the CPU-bound trainer; report in bench-out/quick.md.
bench-quick: build venv
	BENCH_MB=256 BENCH_REPS=1 RTTS=20 THROUGHPUT_EPOCHS=3 BENCH_REPORT=$(abspath bench-out)/quick.md \
	BENCH_COMMAND="make bench-quick" TOOLS="limits baton rclone restic incremental latency flush throughput" \
	bash bench/compare.sh

clean:
	rm -rf target $(VENV) $(DEMO) bench-out $(TORTURE_OUT)

# A portable baton for old execute points (x86_64, glibc >= 2.17: EL7 and later, needing
# only glibc): target/dist/baton. Installs zig and cargo-zigbuild under target/dist-venv,
# builds in target/dist, and fails unless the GLIBC and shared-library checks pass.
# Then the trainer helper's wheel (python/): target/dist/baton_ckpt-<version>-py3-none-any.whl.
dist:
	bash scripts/dist.sh
	bash scripts/wheel.sh

# R4 of the torture suite: each cargo-fuzz target (manifest, classad, chirp, propfind,
# store_url) for FUZZ_SECONDS seconds; fails on any crash. Needs nightly (installed with
# cargo-fuzz if missing), so it is not part of `make test`.
FUZZ_SECONDS ?= 60
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# The torch example on a real GPU (docs/pytorch.md): uninterrupted; evicted GPU -> CPU ->
# GPU; GPU only; and SIGTERM-to-durable-manifest seconds for a model of GPU_CHECK_GIB GiB
# (default 2; 3x with Adam). Under 8 minutes on one GPU; writes docs/gpu.md.
gpu-check: venv
	cargo build --release
	bash scripts/gpu_check.sh
