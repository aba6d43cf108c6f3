#!/usr/bin/env bash
# Idempotent set-up on Debian 12 (as root, or with sudo): Debian's QGIS/GDAL stack, a venv that sees
# them, pinned torch (CPU), then requirements.txt under constraints.txt (the one pin file: OpenCV,
# torch-geometric, Dask, test tools), and hsscl itself.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_PKGS="python3-qgis qgis-providers qgis python3-gdal gdal-bin xvfb python3-venv python3-scipy python3-matplotlib"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "[setup] installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv (system site packages, for PyQGIS and GDAL)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.hsscl-setup-$(sha256sum scripts/setup.sh pyproject.toml requirements.txt constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[setup] installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade "pip>=23" 
  .venv/bin/python -m pip install -q torch -c constraints.txt
  .venv/bin/python -m pip install -q -r requirements.txt -c constraints.txt
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.hsscl-setup-*
  touch "$stamp"
fi
.venv/bin/python -c "import hsscl, hsscl.engine, cv2; print('[setup] ok: hsscl', hsscl.__version__ if hasattr(hsscl, '__version__') else '', '/ OpenCV', cv2.__version__)"
