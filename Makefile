# duetbox: the two commands a fresh Debian 12 machine needs (see README.md).
#   make run    installs what is missing, builds, runs the box with the default config
#   make test   installs what is missing, runs every check and test
# and, for the Raspberry Pi (docs/raspberry-pi.md):
#   make pi     the aarch64 release binary, cross-built through Debian multiarch
#   make deb    duetbox_<version>_amd64.deb and _arm64.deb in target/debian/
SHELL := /bin/bash
CARGO ?= cargo

# The Pi build: Debian's rustc (it has the arm64 std; rustup's shims come first on
# PATH) and its own target dir, so it never rebuilds the host's artifacts.
PI_TARGET := aarch64-unknown-linux-gnu
PI_TARGET_DIR := target-aarch64
PI_CARGO := RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=$(PI_TARGET_DIR) $(CARGO)
PI_BIN := $(PI_TARGET_DIR)/$(PI_TARGET)/release/duetbox

.PHONY: run test setup-run setup-pi setup-deb setup-test setup-fuzz build lint unit bench \
        bench-box bench-songs bench-record fmt pi pi-test deb deb-test boot-test fuzz

setup-run:
	bash scripts/setup.sh run

setup-pi:
	bash scripts/setup.sh pi

setup-deb:
	bash scripts/setup.sh deb

setup-test:
	bash scripts/setup.sh test

setup-fuzz:
	bash scripts/setup.sh fuzz

build: setup-run
	$(CARGO) build --release --locked

run: build
	./target/release/duetbox serve

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# The tests' output is kept in target/test.log; when one fails, .ci/failures repeats
# the panic messages at the end (the backtraces push them out of a CI page's tail).
unit:
	node --test web/test
	@mkdir -p target
	set -o pipefail; $(CARGO) test --locked --all-targets 2>&1 | tee target/test.log \
		|| { bash .ci/failures target/test.log; exit 1; }
	$(CARGO) test --locked --doc

pi: setup-pi
	$(PI_CARGO) build --release --locked --target $(PI_TARGET)
	@ls -l $(PI_BIN)

# The engine's unit tests, built for aarch64 and run under qemu-aarch64 (the runner in
# .cargo/config.toml). They touch no ALSA, so no hermetic ALSA_CONFIG_PATH is needed.
# All of them run, the ten-minute drift soak included (it replays its phones' packets
# so that it stays cheap under emulation).
pi-test: pi
	$(PI_CARGO) test --release --locked --target $(PI_TARGET) --lib engine

deb: setup-deb build pi
	$(CARGO) deb --locked --no-build --output target/debian
	$(PI_CARGO) deb --locked --no-build --target $(PI_TARGET) --output target/debian
	@ls -l target/debian/

# Installs the amd64 package here, verifies the installed unit, purges it (root).
deb-test: deb
	bash .ci/deb-test

# Boots this system as a container under a real systemd and runs the package there:
# start (notify), sandbox, real-time audio thread, watchdog restart, stop, purge (root).
boot-test: deb
	bash .ci/boot-test

# The benchmark binary is built and smoke-run by `unit` (cargo test --all-targets);
# `make bench` prints its table.
test: setup-test lint unit pi-test deb-test boot-test

bench:
	$(CARGO) bench --locked --bench engine

# The real box (`duetbox serve`) with Rust WHIP/WHEP clients: CPU, RSS and return
# latency per scenario (benches/box.rs).
bench-box:
	$(CARGO) bench --locked --bench box

# What decoding a three-minute song costs, per format (benches/songs.rs).
bench-songs:
	$(CARGO) bench --locked --bench songs

# What recording a song costs (backing, mix, 1/2/8 voices; benches/record.rs).
bench-record:
	$(CARGO) bench --locked --bench record

# Coverage-guided fuzzing of every parser the network reaches (fuzz/, cargo-fuzz and
# libFuzzer on the stable compiler through RUSTC_BOOTSTRAP=1), FUZZ_SECONDS per target.
# New inputs land in fuzz/corpus/, crashes in fuzz/artifacts/; `make test` replays both.
FUZZ_SECONDS ?= 120
FUZZ_TARGETS := signaling offer whip_request rtp config mqtt_command
fuzz: setup-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -s none --release $$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

fmt:
	$(CARGO) fmt --all
