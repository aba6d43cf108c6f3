#!/usr/bin/env bash
# Train the HSSCL network on a bare GPU machine from this working tree (no GDAL, no internet needed).
#
#   bash scripts/train_gpu.sh [BUDGET_SECONDS]        (default 420 s of training)
#
# Needs: python3 with torch, numpy and safetensors; the training cache .traincache/hsscl_pairs.npz,
# built beforehand on a machine with GDAL (python scripts/build_traincache.py) and carried along.
# Writes into $OUT (or out/gpu): stdout.log, train_log.jsonl, summary.json, hsscl.safetensors,
# hsscl_best.safetensors, ckpt.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET="${1:-${BUDGET_S:-420}}"
OUTDIR="${OUT:-out/gpu}"
CONFIG="${CONFIG:-configs/hsscl_gpu.json}"
mkdir -p "$OUTDIR"
# the repository root is the package `hsscl`: expose it under that name without installing anything
PKG=$(mktemp -d)
ln -s "$PWD" "$PKG/hsscl"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$OUTDIR/stdout.log"
import numpy, safetensors, torch
print("python ok: torch", torch.__version__, "numpy", numpy.__version__, "safetensors", safetensors.__version__,
      "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PY
if [ ! -f .traincache/hsscl_pairs.npz ]; then
  echo "missing .traincache/hsscl_pairs.npz: build it with scripts/build_traincache.py and carry .traincache" | tee -a "$OUTDIR/stdout.log"
  exit 2
fi
python3 -m hsscl.engine.train.cli "$CONFIG" --out "$OUTDIR" --time-budget "$BUDGET" 2>&1 | tee -a "$OUTDIR/stdout.log"
ls -la "$OUTDIR"
