#!/usr/bin/env bash
# Sets up everything diffrecon needs from a clean clone: Debian packages for the viewer's X server,
# a virtualenv in .venv, torch, and the project with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
  libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)

missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
# torch and torchvision must come as a matched pair: these are the wheels this machine holds.
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing torch and torchvision"
  .venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
fi
echo "[setup] installing diffrecon"
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
# napari runs on PyQt6 (its PyQt5 backend is deprecated); qtpy would still pick a PyQt5 left by an older setup.
if .venv/bin/python -c "import PyQt6.QtWidgets" >/dev/null 2>&1; then
  .venv/bin/pip uninstall -y -q PyQt5 PyQt5-Qt5 PyQt5-sip >/dev/null 2>&1 || true
fi
.venv/bin/python -c "import recon, operators" || { echo "[setup] install failed"; exit 1; }
echo "[setup] ready"
