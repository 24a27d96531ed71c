#!/usr/bin/env bash
# Sets everything up (the real scans too, for their tests) and runs the whole test suite under a virtual X server (napari needs real OpenGL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_scans.sh
exec xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest -q "$@"
