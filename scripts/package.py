#!/usr/bin/env python3
"""Build ``hsscl.zip``: the QGIS plugin as installed from a zip (one folder ``hsscl/``), without tests,
benchmarks, scripts, docs and other development files.

Usage: ``python scripts/package.py [--output hsscl.zip] [--list]``. Files are taken from git (tracked, plus
untracked ones that are not ignored) when git is available, else from the working tree.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER = "hsscl"
# top-level entries that belong to the installed plugin
INCLUDE = ("__init__.py", "metadata.txt", "LICENSE", "LICENSE.txt", "COPYING", "engine", "plugin", "ui",
           "resources")
EXCLUDE = ("*/__pycache__/*", "*.pyc", "*.pyo", "*/.pytest_cache/*", "*/.mypy_cache/*", "*/.ruff_cache/*",
           "*/tests/*", "*/test_*.py", "*.orig", "*.rej", "*~", "*.swp", ".DS_Store")


def candidate_files(root: Path = ROOT) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, check=True)
        files = [f for f in out.stdout.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in files if (root / f).is_file())


def selected(files: list[str]) -> list[str]:
    keep = []
    for rel in files:
        rel = rel.replace(os.sep, "/")
        top = rel.split("/", 1)[0]
        if top not in INCLUDE:
            continue
        if any(fnmatch.fnmatch("/" + rel, pat) or fnmatch.fnmatch(rel, pat) for pat in EXCLUDE):
            continue
        keep.append(rel)
    return keep


def build(output: Path, root: Path = ROOT) -> list[str]:
    files = selected(candidate_files(root))
    missing = [f for f in ("__init__.py", "metadata.txt") if f not in files]
    if missing:
        raise SystemExit(f"package: {', '.join(missing)} missing from {root}")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for rel in files:
            zf.write(root / rel, f"{FOLDER}/{rel}")
    os.replace(tmp, output)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", type=Path, default=ROOT / "hsscl.zip")
    parser.add_argument("--list", action="store_true", help="print the packaged files")
    args = parser.parse_args(argv)
    files = build(args.output)
    if args.list:
        print("\n".join(files))
    size = args.output.stat().st_size
    print(f"{args.output}: {len(files)} files, {size / 1024:.0f} KiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
