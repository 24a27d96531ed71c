#!/usr/bin/env bash
# Sets everything up and runs the demo on built-in data; outputs land in demo_output/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/recon demo --out demo_output "$@"
