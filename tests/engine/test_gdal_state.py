"""GDAL's exception mode is the host's (QGIS's): the engine turns it on only around its own calls.

Each check runs in a fresh interpreter, since the test modules themselves switch exceptions on at import.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "sample"

PRELUDE = """
import json
from osgeo import gdal, ogr, osr
MODULES = (gdal, ogr, osr)
def modes():
    return [bool(m.GetUseExceptions()) for m in MODULES]
def set_modes(want):
    for m, on in zip(MODULES, want):          # on in the order gdal, ogr, osr ...
        if on and not m.GetUseExceptions():
            m.UseExceptions()
def clear_modes():
    for m in reversed(MODULES):               # ... off in the reverse order (GDAL 3.6's handler stack)
        if m.GetUseExceptions():
            m.DontUseExceptions()
"""


def run_python(body: str, timeout: float = 600) -> dict:
    code = PRELUDE + textwrap.dedent(body)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("before", [[False, False, False], [True, True, True], [True, False, True],
                                    [False, True, False]])
def test_importing_the_engine_leaves_the_exception_modes_as_they_were(before):
    out = run_python(f"""
        set_modes({before!r})
        import hsscl.engine, hsscl.engine.pipeline, hsscl.engine.warp, hsscl.engine.cli, hsscl.engine.scene
        import hsscl.engine.io.raster, hsscl.engine.io.vector, hsscl.engine.train.cache
        after = modes()
        clear_modes()                          # raises "Cannot call ...DontUseExceptions()" if the stack is off
        print(json.dumps({{"after": after, "cleared": modes()}}))
    """)
    assert out == {"after": before, "cleared": [False, False, False]}


def test_gdal_exceptions_scopes_and_restores_each_module():
    out = run_python("""
        from hsscl.engine.io.gdal_env import gdal_exceptions
        res = {}
        set_modes([False, True, False])        # the host uses exceptions in ogr only
        with gdal_exceptions():
            res["inside"] = modes()
            try:
                gdal.Open("/nonexistent/raster.tif")
                res["raised"] = False
            except RuntimeError:
                res["raised"] = True
            with gdal_exceptions():            # nested: nothing to switch
                res["nested"] = modes()
            res["after_nested"] = modes()
        res["after"] = modes()
        try:                                   # an error inside the block still restores
            with gdal_exceptions():
                raise ValueError("boom")
        except ValueError:
            pass
        res["after_error"] = modes()
        res["none"] = gdal.Open("/nonexistent/raster.tif") is None   # host's mode: None, no exception
        clear_modes()
        res["cleared"] = modes()
        print(json.dumps(res))
    """)
    assert out == {"inside": [True, True, True], "raised": True, "nested": [True, True, True],
                   "after_nested": [True, True, True], "after": [False, True, False],
                   "after_error": [False, True, False], "none": True, "cleared": [False, False, False]}


@pytest.mark.slow
def test_a_coregister_run_leaves_the_exception_modes_as_they_were(tmp_path):
    """The bundled sample co-registered with exceptions off, then on, then mixed: each module as it was;
    the host can switch them all off afterwards (no "Cannot call gdal.DontUseExceptions()")."""
    out = run_python(f"""
        from hsscl.engine import pipeline
        from hsscl.engine.config import CoregConfig
        from hsscl.engine.io.vector import read_tiepoints_gpkg
        ref, tgt = {str(SAMPLE / "s2_reference.tif")!r}, {str(SAMPLE / "s1_target_misregistered.tif")!r}
        res = {{}}
        for name, state in (("off", [False, False, False]), ("on", [True, True, True]),
                            ("mixed", [True, False, True])):
            clear_modes()
            set_modes(state)
            r = pipeline.coregister(ref, tgt, {str(tmp_path)!r} + "/" + name, CoregConfig(seed=0))
            read_tiepoints_gpkg({str(tmp_path)!r} + "/" + name + "/tiepoints.gpkg")
            res[name] = {{"before": state, "after": modes(), "inliers": r.n_inliers}}
        clear_modes()
        res["cleared"] = modes()
        print(json.dumps(res))
    """)
    for name in ("off", "on", "mixed"):
        assert out[name]["after"] == out[name]["before"], (name, out[name])
    assert out["off"]["inliers"] == out["on"]["inliers"] == out["mixed"]["inliers"] > 0
    assert out["cleared"] == [False, False, False]
