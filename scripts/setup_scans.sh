#!/usr/bin/env bash
# Installs the Debian packages that carry the real scans used to train the built-in priors and by
# benchmarks/bench_real.py (see recon/priors/scans.py). The shipped weights need none of them.
# Safe to run again; without apt it says so and returns 0 (the tests that need the scans then skip).
set -uo pipefail
PACKAGES=(invesalius-examples mricron-data insighttoolkit5-examples)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "[setup] installing the real-scan packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
  echo "[setup] could not install ${missing[*]}: the tests that need the real scans will skip"
fi
exit 0
