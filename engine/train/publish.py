"""Install trained weights as the shipped model: copy into resources/models and update registry.json.

``python -m hsscl.engine.train.publish RUN_DIR [--best] [--models resources/models]``
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from ..network.registry import MODELS_DIR, load_weights, sha256


def publish(run_dir: str | Path, models_dir: str | Path = MODELS_DIR, best: bool = False,
            data: list[str] | None = None, compute: str | None = None) -> dict:
    run = Path(run_dir)
    summary = json.loads((run / "summary.json").read_text())
    src = run / (summary["best_weights"] if best and summary.get("best_weights") else summary["weights"])
    if summary.get("model") == "prefilter":
        from ..network.prefilter import load_prefilter

        load_prefilter(src)  # refuses anything that is not a loadable pre-filter
        net_config = None
    else:
        net_config = load_weights(src).config.to_dict()  # refuses anything that is not loadable HSSCL weights
    models = Path(models_dir)
    name, version = summary["name"], summary["version"]
    if summary.get("model") == "prefilter":
        from ..descriptors.learned_cfog import REGISTRY_NAME

        name = REGISTRY_NAME  # the entry learned-cfog reads, whatever the run was called
    dst = models / f"{name}-{version}.safetensors"
    shutil.copyfile(src, dst)
    reg_path = models / "registry.json"
    reg: dict[str, Any] = json.loads(reg_path.read_text()) if reg_path.is_file() else {"format": 1, "models": {}}
    entry = {
        "name": name, "version": version, "file": dst.name, "sha256": sha256(dst),
        "bytes": dst.stat().st_size, "parameters": summary["parameters"],
        "training_config": summary["config"], "trained": {
            "steps": summary["steps"], "seconds": summary["seconds"], "device": compute or summary["device"],
            "torch": summary["torch"], "which": "best held-out PCK@1" if best else "final"},
        "data": data or summary["train_sources"], "held_out": summary["val_keys"],
        "validation": {summary.get("model", "hsscl"): summary["val_final"], "cfog": summary["cfog_val"],
                       "best_pck1": summary["val_best_pck1"]},
    }
    if net_config is not None:
        entry["net_config"] = net_config  # what the file holds (a fine-tuning config may not say)
    if summary.get("excluded_keys"):
        entry["excluded"] = summary["excluded_keys"]
    reg.setdefault("models", {})[name] = entry
    reg_path.write_text(json.dumps(reg, indent=2) + "\n")
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--best", action="store_true", help="ship the best held-out checkpoint, not the final one")
    ap.add_argument("--models", default=str(MODELS_DIR))
    a = ap.parse_args(argv)
    e = publish(a.run_dir, a.models, a.best)
    print(f"installed {e['file']} sha256 {e['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
