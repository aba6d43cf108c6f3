"""The benchmark's rows of our engine: every command line is one the CLI accepts, with the options the row's
label promises; rows that read unpublished weights say how to train them when they are missing."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.tools import registry as R
from hsscl.engine.cli import build_parser

CASE = {"reference": "ref.tif", "target": "tgt.tif", "truth": "truth.tif", "_threads": 1}
OURS = [t for t in R.TOOLS.values() if t.group == "ours"]


@pytest.mark.parametrize("tool", OURS, ids=[t.name for t in OURS])
def test_every_engine_row_parses(tool, tmp_path, monkeypatch):
    monkeypatch.delenv("HSSCL_BENCH_ARGS", raising=False)
    (cmd,) = tool.timed(CASE, tmp_path)
    args = build_parser().parse_args(cmd[1:])
    assert args.command == "coregister" and args.threads == 1
    label = tool.label.lower()
    if "adaptation" in label:
        assert "--adapt" in cmd
    if "graph" in label and "no graph" not in label:
        assert cmd[cmd.index("--graph") + 1] == "on"
    if "without coral" in label:
        assert cmd[cmd.index("--weights") + 1] == str(R.NOCORAL)


def test_network_base_rows_for_issue_6():
    """Network alone, + graph, + adaptation, + both: four rows that differ only in those two switches."""
    rows = [R.TOOLS[n].timed(CASE, Path("/w"))[0] for n in
            ("hsscl_net", "hsscl_net_graph", "hsscl_net_adapt", "hsscl_net_graph_adapt")]
    switches = [(c[c.index("--graph") + 1], "--adapt" in c) for c in rows]
    assert switches == [("off", False), ("on", False), ("off", True), ("on", True)]
    assert all(c[c.index("--descriptor") + 1] == "hsscl" for c in rows)


def test_missing_ablation_weights_say_how_to_train(tmp_path):
    missing = R._weights_ok(R.ROOT / "out" / "no_such_run" / "hsscl.safetensors", "make train-ablation-da")()
    assert missing is not None and "make train-ablation-da" in missing and "not trained" in missing
    present = R._weights_ok(R.ROOT / "resources" / "models" / "hsscl-0.2.0.safetensors", "x")()
    assert present == R._hsscl_ok()
