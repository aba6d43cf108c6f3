"""Fixtures of the engine tests: the shared real-data folder and small helpers around it."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest


def shared_root() -> Path:
    """$HSSCL_SHARED_DATA, else ``<repo>/../shared/data``."""
    env = os.environ.get("HSSCL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_root()
    if not root.is_dir():
        pytest.skip(f"../shared/data not found: {root} (set HSSCL_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def data_file(shared_data: Path) -> Callable[[str], str]:
    """``data_file(rel)``: absolute path of a shared file, skipping the test when it is absent."""
    def get(rel: str) -> str:
        p = shared_data / rel
        if not p.is_file():
            pytest.skip(f"../shared/data not found: {rel} is not in this copy of the shared data")
        return str(p)
    return get

