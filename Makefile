# Convenience targets; each runs the idempotent set-up first (scripts/setup.sh).
PY := .venv/bin/python

.PHONY: setup demo test test-fast package lint screenshot clean
setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

test-fast:
	bash scripts/test.sh -m "not slow"

package: setup
	$(PY) scripts/package.py

screenshot: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) scripts/screenshot.py

lint: setup
	$(PY) -m pip install -q ruff mypy
	$(PY) -m ruff check engine plugin scripts bench
	$(PY) -m mypy engine

clean:
	rm -rf demo_out build dist hsscl.zip

-include bench/bench.mk
