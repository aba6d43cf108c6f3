#!/usr/bin/env bash
# Set up (idempotent) and co-register the bundled Sentinel-1 / Sentinel-2 sample into ./demo_out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "${1:-demo_out}"
