#!/usr/bin/env bash
# Installs everything duetbox needs to build, run and test on Debian 12 (bookworm).
# Idempotent: safe to run again; it installs only what is missing.
#
#   scripts/setup.sh run    what `make run` needs (toolchain, C libraries)
#   scripts/setup.sh test   what `make test` needs (run + browsers, ALSA plugins, sox, ...)
set -euo pipefail

profile=${1:-test}
export DEBIAN_FRONTEND=noninteractive

run_pkgs=(build-essential cmake pkg-config libasound2-dev libopus-dev ca-certificates curl)
test_pkgs=(chromium chromium-driver pulseaudio libasound2-plugins alsa-utils sox
           mosquitto mosquitto-clients iproute2 systemd nodejs npm)

want=("${run_pkgs[@]}")
[ "$profile" = test ] && want+=("${test_pkgs[@]}")

missing=()
for p in "${want[@]}"; do
  case "$p" in
    # A newer Node.js than Debian's may already be installed outside dpkg's view.
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # apt drops a whole suite silently when one index fails: treat any E: line as fatal.
  out=$($SUDO apt-get update 2>&1) || { echo "$out"; exit 1; }
  if grep -q '^E:' <<<"$out"; then echo "$out"; echo "setup: apt-get update failed" >&2; exit 1; fi
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
else
  echo "setup: system packages present"
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

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
