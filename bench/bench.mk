# Benchmark targets; included from the main Makefile (`include bench/bench.mk`).
# `make bench`: all cases (< 30 min on 2 cores); `make bench-quick`: about a dozen cases (< 5 min).
# Both set up the project (.venv) and the peers' own venv (.bench/venv) first; both are idempotent.
# `make bench-scale`: time / peak memory / accuracy on 1k, 4k and 10980 px real-data scenes (bench/scale.py,
# about 10 min); `make bench` runs it after the cases and writes its "Scale" section of docs/benchmarks.md.
# `make bench-speed`: issue 5's time limits (1024 px end to end on 2 cores, each descriptor; the recorded GPU
# check beside it; bench/speed.py, about 3 min); `make bench` writes its "Speed" section last.
BENCH_ARGS ?=
SCALE_ARGS ?=

.PHONY: bench bench-quick bench-setup bench-ablation bench-scale bench-speed bench-heldout bench-network bench-second-opinion \
	bench-strong bench-heldout-strong

bench-setup:
	bash scripts/setup.sh
	bash bench/setup_peers.sh

bench: bench-setup
	.venv/bin/python -m bench.run --out docs/benchmarks.md $(BENCH_ARGS)
	.venv/bin/python -m bench.scale --out docs/benchmarks.md
	.venv/bin/python -m bench.speed --out docs/benchmarks.md

bench-quick: bench-setup
	.venv/bin/python -m bench.run --quick --out .bench/benchmarks_quick.md --csv .bench/benchmarks_quick.csv \
		--plot .bench/bench_cdf_quick.png $(BENCH_ARGS)

bench-scale:
	bash scripts/setup.sh
	.venv/bin/python -m bench.scale --out docs/benchmarks.md $(SCALE_ARGS)

# SPEED_BEFORE=DIR: also measure another engine in process and show it beside ("before"): DIR holds `hsscl`, a
# checkout of that engine (e.g. `git worktree add /tmp/before <commit>; mkdir /tmp/b; ln -s /tmp/before /tmp/b/hsscl`)
SPEED_BEFORE ?=
bench-speed:
	bash scripts/setup.sh
	$(if $(SPEED_BEFORE),.venv/bin/python -m bench.speed_inprocess --engine-root $(SPEED_BEFORE) --repeats 3 \
		--json .bench/speed_before.json &&) .venv/bin/python -m bench.speed --out docs/benchmarks.md \
		$(if $(SPEED_BEFORE),--before-json .bench/speed_before.json)

# issue 5: the network descriptor and its ablation (each level alone, no denoising) beside the structural
# descriptor, all without graph refinement; a table of its own (docs/benchmarks_ablation.md). The levels
# staged coarse to fine lost every benchmark and left the product: docs/ablation/staged-levels.md
ABLATION_TOOLS := none,hsscl_nograph,hsscl_lcfog,hsscl_hybrid,hsscl_net,hsscl_net_fine,hsscl_net_mid,hsscl_net_coarse,hsscl_net_nodenoise
bench-ablation: bench-setup
	.venv/bin/python -m bench.run --tools $(ABLATION_TOOLS) --out docs/benchmarks_ablation.md \
		--csv docs/benchmarks_ablation.csv --plot docs/img/bench_cdf_ablation.png $(BENCH_ARGS)

# the held-out set (bench/heldout.py): pairs no dev case uses, their own seed; cases in .bench/cases_heldout.
# Check decisions tuned on the 50 dev cases here; a table of its own (docs/benchmarks_heldout.md)
HELDOUT_TOOLS ?= none,sift,arosics_global,arosics_local,gefolki,lightglue,plain_cfog,hsscl,hsscl_guess,hsscl_cfog,hsscl_graph,hsscl_lcfog,hsscl_hybrid,hsscl_net
bench-heldout: bench-setup
	.venv/bin/python -m bench.run --set heldout --tools $(HELDOUT_TOOLS) --out docs/benchmarks_heldout.md \
		--csv docs/benchmarks_heldout.csv --plot docs/img/bench_cdf_heldout.png $(BENCH_ARGS)

# issue 6 with the network as the base (alone, + graph, + adaptation, + both; the hybrid with both) and
# issue 5's domain-alignment ablation (network and hybrid with weights trained without CORAL: run
# `make train-ablation-da` first, or those two rows say "not trained yet"), on the held-out set and then on
# the dev cases; tables of their own (docs/benchmarks_network_heldout.md, docs/benchmarks_network.md)
NETWORK_TOOLS ?= none,hsscl_net,hsscl_net_graph,hsscl_net_adapt,hsscl_net_graph_adapt,hsscl_hybrid,hsscl_hybrid_graph_adapt,hsscl_net_nocoral,hsscl_hybrid_nocoral
bench-network: bench-setup
	.venv/bin/python -m bench.run --set heldout --tools $(NETWORK_TOOLS) --out docs/benchmarks_network_heldout.md \
		--csv docs/benchmarks_network_heldout.csv --plot docs/img/bench_cdf_network_heldout.png $(BENCH_ARGS)
	.venv/bin/python -m bench.run --tools $(NETWORK_TOOLS) --out docs/benchmarks_network.md \
		--csv docs/benchmarks_network.csv --plot docs/img/bench_cdf_network.png $(BENCH_ARGS)

# the default's second opinion (CFOG; on refusal, CFOG on the learned pre-filter) beside CFOG alone and the
# pre-filter alone, dev set (~9 min); docs/benchmarks_second_opinion.md. The held-out set has the same rows.
bench-second-opinion: bench-setup
	.venv/bin/python -m bench.run --tools none,hsscl,hsscl_cfog,hsscl_lcfog --out docs/benchmarks_second_opinion.md \
		--csv docs/benchmarks_second_opinion.csv --plot '' $(BENCH_ARGS)

# the strong misregistration sets (bench/strong.py): the dev / held-out sources with shift up to 80 px (15 % of the
# image), ±10°, ±10 % and a smooth local distortion up to 3 px, their own seeds (+2, +3) and case folders
# (.bench/cases_strong, .bench/cases_heldout_strong); tables of their own (docs/benchmarks_strong.md,
# docs/benchmarks_heldout_strong.md) with the refusal / wrong-answer columns and the confidence calibration
STRONG_TOOLS ?= none,sift,arosics_global,arosics_local,gefolki,lightglue,plain_cfog,hsscl,hsscl_guess,hsscl_cfog
bench-strong: bench-setup
	.venv/bin/python -m bench.run --set strong --tools $(STRONG_TOOLS) --out docs/benchmarks_strong.md \
		--csv docs/benchmarks_strong.csv --plot docs/img/bench_cdf_strong.png $(BENCH_ARGS)

bench-heldout-strong: bench-setup
	.venv/bin/python -m bench.run --set heldout-strong --tools $(STRONG_TOOLS) --out docs/benchmarks_heldout_strong.md \
		--csv docs/benchmarks_heldout_strong.csv --plot docs/img/bench_cdf_heldout_strong.png $(BENCH_ARGS)
