# duetbox: the two commands a fresh Debian 12 machine needs (see README.md).
#   make run    installs what is missing, builds, runs the box with the default config
#   make test   installs what is missing, runs every check and test
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test setup-run setup-test build lint unit bench fmt

setup-run:
	bash scripts/setup.sh run

setup-test:
	bash scripts/setup.sh test

build: setup-run
	$(CARGO) build --release --locked

run: build
	./target/release/duetbox serve

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --all-targets
	$(CARGO) test --locked --doc

test: setup-test lint unit
	$(CARGO) bench --locked --no-run

bench:
	$(CARGO) bench --locked --bench engine

fmt:
	$(CARGO) fmt --all
