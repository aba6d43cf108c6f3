"""Build the HSSCL training cache (.traincache/hsscl_pairs.npz) from the redistributable real pairs.

Usage: .venv/bin/python scripts/build_traincache.py [--data ../shared/data] [--out .traincache/hsscl_pairs.npz]
Needs GDAL (run it here, not on the GPU machine); the cache it writes needs only numpy + torch.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("HSSCL_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(ROOT / ".traincache" / "hsscl_pairs.npz"))
    a = ap.parse_args(argv)
    from hsscl.engine.train.cache import build_cache

    print(f"building {a.out} from {a.data}")
    build_cache(a.data, a.out)
    print(f"wrote {a.out} ({Path(a.out).stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
