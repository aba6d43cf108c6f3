"""Colour composites of SAR channels (Pauli RGB, dual-pol VV/VH/ratio) are recognised as SAR from their
statistics (fine detail uncorrelated between bands, nowhere flat); optical RGB and maps are not."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hsscl.engine.modality import detect_modality

DATA = Path(os.environ.get("HSSCL_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
BEN_S1 = DATA / "bigearthnet_example" / "BigEarthNet-S1-Example"
MMIM = DATA / "mmim_jiang2021_RemoteSensing"


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    from osgeo import gdal

    if not path.is_file():
        pytest.skip(f"shared data not found: {path}")
    ds = gdal.Open(str(path))
    data = ds.ReadAsArray().astype(np.float32)
    data = data[None] if data.ndim == 2 else data
    return data, np.ones(data.shape[1:], bool), gdal.GetDataTypeName(ds.GetRasterBand(1).DataType)


def _byte(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((a - lo) / (hi - lo) * 255, 0, 255).round().astype(np.float32)


@pytest.mark.parametrize("patch", ["87_48", "36_85", "4_55"])
def test_dual_pol_colour_composite_is_sar(patch):
    """R = VV, G = VH, B = VV/VH (dB), stretched to 8 bits, as dual-pol quick-looks are made."""
    vv_path = next(iter(sorted(BEN_S1.glob(f"*_{patch}/*_VV.tif"))), None)
    if vv_path is None:
        pytest.skip(f"BigEarthNet S1 patch {patch} not found")
    vv, valid, _ = _read(vv_path)
    vh, _, _ = _read(Path(str(vv_path).replace("_VV.tif", "_VH.tif")))
    composite = np.stack([_byte(vv[0], -25, 0), _byte(vh[0], -30, -5), _byte(vv[0] - vh[0], 0, 15)])
    info = detect_modality(composite, valid, "Byte")
    assert info.modality == "sar" and info.sar_scale is None, info.reason
    assert "composite" in info.reason


def test_colour_sar_image_is_sar():
    data, valid, dtype = _read(MMIM / "SAR_Optical" / "SO3a.png")
    info = detect_modality(data, valid, dtype)
    assert info.modality == "sar", info.reason


@pytest.mark.parametrize("rel", ["SAR_Optical/SO1a.png", "SAR_Optical/SO3b.png", "Map_Optical/MO2a.png",
                                 "Map_Optical/MO3a.png", "DayNight/DN4a.png"])
def test_optical_colour_images_and_maps_stay_optical(rel):
    data, valid, dtype = _read(MMIM / rel)
    info = detect_modality(data, valid, dtype)
    assert info.modality == "optical", info.reason
