#!/usr/bin/env bash
# Installs everything duetbox needs to build, run and test on Debian 12 (bookworm).
# Idempotent: safe to run again; it installs only what is missing.
#
#   scripts/setup.sh run    what `make run` needs (toolchain, C libraries)
#   scripts/setup.sh pi     what `make pi` needs: the aarch64 (Raspberry Pi) cross build
#                           through Debian multiarch (no Docker), see docs/raspberry-pi.md
#   scripts/setup.sh deb    what `make deb` needs: pi + cargo-deb (pinned) + dpkg-dev
#   scripts/setup.sh test   what `make test` needs (run + deb + browsers, ALSA plugins,
#                           sox, systemd's tools and systemd-nspawn, ...)
#   scripts/setup.sh fuzz   what `make fuzz` needs: run + cargo-fuzz (pinned)
set -euo pipefail

profile=${1:-test}
case "$profile" in run | pi | deb | test | fuzz) ;; *) echo "usage: $0 run|pi|deb|test|fuzz" >&2; exit 2 ;; esac
export DEBIAN_FRONTEND=noninteractive

# The pinned cargo-deb (`make deb`); --locked builds it with its own lock file.
CARGO_DEB_VERSION=3.8.0
# The pinned cargo-fuzz (`make fuzz`).
CARGO_FUZZ_VERSION=0.13.2

run_pkgs=(build-essential cmake pkg-config libasound2-dev libopus-dev ca-certificates curl)
# The aarch64 cross build (PLATFORM.md §1): Debian's rustc with an arm64 std, the cross
# gcc/libc, the arm64 ALSA and Opus headers and libraries, and qemu to run the tests.
# rustc-web and libstd-rust-web-dev:arm64 must be the same version (checked below).
pi_pkgs=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu
         libc6-dev-arm64-cross libasound2-dev:arm64 libopus-dev:arm64 qemu-user-static)
deb_pkgs=(dpkg-dev file systemd)
# systemd-container: .ci/boot-test boots this system under a real systemd (nspawn).
# firefox-esr: the second browser engine of the phone tests. jackd2: a JACK server on
# its dummy driver, whose ALSA plugin (libasound2-plugins) grants only its own period.
# lame, opus-tools and ffmpeg make the test songs sox cannot (mp3, opus, m4a/aac).
test_pkgs=(chromium chromium-driver firefox-esr pulseaudio libasound2-plugins alsa-utils
           sox jackd2 mosquitto mosquitto-clients iproute2 systemd systemd-container
           procps nodejs npm avahi-daemon avahi-utils zbar-tools libnss3-tools openssl dbus
           lame opus-tools ffmpeg)

want=("${run_pkgs[@]}")
case "$profile" in
  pi) want+=("${pi_pkgs[@]}") ;;
  deb) want+=("${pi_pkgs[@]}" "${deb_pkgs[@]}") ;;
  test) want+=("${pi_pkgs[@]}" "${deb_pkgs[@]}" "${test_pkgs[@]}") ;;
esac

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

need_update=0
if [ "$profile" != run ] && [ "$profile" != fuzz ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "setup: adding the arm64 architecture (multiarch) for the Pi build"
  $SUDO dpkg --add-architecture arm64
  need_update=1
fi

missing=()
for p in "${want[@]}"; do
  case "$p" in
    # A newer Node.js than Debian's may already be installed outside dpkg's view.
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ] || [ $need_update = 1 ]; then
  # apt drops a whole suite silently when one index fails: treat any E: line as fatal.
  out=$($SUDO apt-get update 2>&1) || { echo "$out"; exit 1; }
  if grep -q '^E:' <<<"$out"; then echo "$out"; echo "setup: apt-get update failed" >&2; exit 1; fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
else
  echo "setup: system packages present"
fi

if [ "$profile" != run ] && [ "$profile" != fuzz ]; then
  # Debian's rustc compiles against the arm64 std of exactly its own version; a mix
  # (one from bookworm-security, one from bookworm) fails with "can't find crate for
  # `std`" or E0514. Name both versions rather than let that happen.
  host_rustc=$(dpkg-query -W -f='${Version}' rustc-web)
  arm64_std=$(dpkg-query -W -f='${Version}' libstd-rust-web-dev:arm64)
  if [ "$host_rustc" != "$arm64_std" ]; then
    echo "setup: rustc-web is $host_rustc but libstd-rust-web-dev:arm64 is $arm64_std;" \
         "they must match (apt-get install libstd-rust-web-dev:arm64=$host_rustc)" >&2
    exit 1
  fi
  [ -x /usr/bin/rustc ] || { echo "setup: /usr/bin/rustc missing after installing rustc-web" >&2; exit 1; }
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi

if [ "$profile" = test ]; then
  # The headless-phone driver (tests/e2e): playwright-core only, pinned in the lock file;
  # it drives Debian's Chromium and never downloads a browser.
  here=$(cd "$(dirname "$0")/.." && pwd)
  if [ ! -d "$here/tests/e2e/node_modules/playwright-core" ] ||
     [ "$here/tests/e2e/package-lock.json" -nt "$here/tests/e2e/node_modules/.package-lock.json" ]; then
    echo "setup: installing the e2e driver's npm packages"
    (cd "$here/tests/e2e" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
  fi
fi

if [ "$profile" = deb ] || [ "$profile" = test ]; then
  # `make deb`: cargo-deb, pinned. Installed once (cargo install builds it, ~2 min).
  if [ "$(cargo deb --version 2>/dev/null | awk '{print $NF}')" != "$CARGO_DEB_VERSION" ]; then
    echo "setup: installing cargo-deb $CARGO_DEB_VERSION"
    nice -n 15 cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
  fi
fi

if [ "$profile" = fuzz ]; then
  if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $NF}')" != "$CARGO_FUZZ_VERSION" ]; then
    echo "setup: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    nice -n 15 cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
  fi
fi
