# Convenience targets; each runs the idempotent set-up first (scripts/setup.sh).
PY := .venv/bin/python

.PHONY: setup demo test test-fast package lint screenshot clean train train-smoke train-cache train-prefilter train-ablation-da train-verifier
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
	$(PY) -m ruff check engine plugin scripts bench tests
	$(PY) -m mypy engine

clean:
	rm -rf demo_out build dist hsscl.zip

train-cache: setup
	$(PY) scripts/build_traincache.py

# the network from scratch on 2 CPU cores in under 2 hours (configs/hsscl_cpu_2h.json; held-out locations
# excluded); the same config trains on a GPU with --device cuda; the GPU recipe is scripts/train_gpu.sh
train: train-cache
	$(PY) -m hsscl.engine.cli train configs/hsscl_cpu_2h.json --out out/train --threads 2

# CPU smoke-scale training (300 steps, 10-20 min on 2 cores): checks that the loss goes down
train-smoke: train-cache
	$(PY) -m hsscl.engine.cli train configs/hsscl_cpu_smoke.json --out out/train_smoke

# the learned pre-filter of CFOG, from scratch on 2 CPU cores (about 35 min), held-out locations excluded;
# publish with: $(PY) -m hsscl.engine.train.publish out/prefilter --best
train-prefilter: train-cache
	$(PY) -m hsscl.engine.cli train configs/prefilter_cpu.json --out out/prefilter --threads 2

# issue 5's domain-alignment ablation: the 0.2.0 recipe with its CORAL term off, for the same 2950 steps
# (about 40 min on 2 idle cores); not published: `make bench-network` reads out/ablation_nocoral/hsscl.safetensors
train-ablation-da: train-cache
	$(PY) -m hsscl.engine.cli train configs/hsscl_tm_cpu_nocoral.json --out out/ablation_nocoral --threads 2

# the verify stage's confidence (issue 17), fitted self-supervised on the training pairs (held-out benchmark
# locations excluded): 2 x 150 misregistered crops (seeds 0 and 1, one core each, about 6 min) matched with the
# decision off, then both heads fitted on their union and published (how verifier-0.1.0 was made)
train-verifier: train-cache
	$(PY) -m hsscl.engine.train.verifier --samples 150 --seed 0 --save-records out/verifier_records_s0.json \
		--out out/verifier-s0.json & \
	$(PY) -m hsscl.engine.train.verifier --samples 150 --seed 1 --save-records out/verifier_records_s1.json \
		--out out/verifier-s1.json; wait
	$(PY) -m hsscl.engine.train.verifier --records out/verifier_records_s0.json out/verifier_records_s1.json \
		--out resources/models/verifier-0.1.0.json --publish

include bench/bench.mk

# issue 18: the packaged zip in a clean QGIS profile: enable, list, help, run; asserts the release bar
check-plugin: setup
	bash scripts/check_plugin.sh

# faults tried as a user would (issue 22, docs/batch.md "Faults"): disk full (tmpfs: run as root), racing runs,
# SIGKILLs, a user's files, SIGTERM, a real Dask scheduler lost; about 10 minutes on 2 cores
.PHONY: check-faults
check-faults: setup
	bash scripts/check_faults.sh
