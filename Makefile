# baton: `make demo` runs the main job, `make test` runs every test.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
BATON := target/release/baton
DEMO  := demo-out

.PHONY: all build demo test unit bench dist clean venv

all: build

build:
	cargo build --release

# Python tools the tests need (moto's S3 server), in a local virtualenv.
$(VENV)/.installed: requirements-test.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

# Local preemption demo: the example trainer, evicted with SIGTERM, restarted on an
# empty directory, resumes from its checkpoint in the default (directory) store.
demo: build
	bash fixtures/demo.sh $(BATON) $(DEMO)

test: venv
	BATON_TEST_MOTO=$(abspath $(VENV))/bin/moto_server cargo test -- --test-threads 4

unit:
	cargo test --bins

bench: build venv
	bash bench/run.sh

clean:
	rm -rf target $(VENV) $(DEMO) bench-out
