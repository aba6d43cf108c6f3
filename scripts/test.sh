#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: engine, Processing, widgets, benchmark harness.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
export PYTHONPATH="/usr/share/qgis/python/plugins${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
