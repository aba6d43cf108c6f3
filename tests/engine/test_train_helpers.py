"""Training helpers: the augmentation draws only from its seeded generator; the training device is chosen
as the engine chooses it."""
from __future__ import annotations

import warnings

import pytest
import torch

from hsscl.engine.device import resolve_device
from hsscl.engine.train.augment import MAX_LOOKS, augment, speckle_gamma
from hsscl.engine.train.runner import pick_device


def _batch(b: int = 4, s: int = 48):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(b, 1, s, s, generator=g)
    valid = torch.ones(b, 1, s, s, dtype=torch.bool)
    valid[0, :, :5] = False
    modality = torch.tensor([0, 1, 0, 1])[:b]
    return x, valid, modality


def test_augment_is_reproducible_from_its_generator_and_leaves_the_global_rng_alone():
    x, valid, modality = _batch()
    torch.manual_seed(7)
    state = torch.get_rng_state()
    a = augment(x, valid, modality, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from torch's global generator
    torch.manual_seed(99)  # a different global state changes nothing
    b = augment(x, valid, modality, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    c = augment(x, valid, modality, torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)
    assert a.shape == x.shape and torch.isfinite(a).all() and (a[~valid] == 0).all()


@pytest.mark.parametrize("looks", range(1, MAX_LOOKS + 1))
def test_speckle_is_gamma_of_l_looks_with_unit_mean(looks):
    g = speckle_gamma(torch.full((2,), looks), 150, 150, torch.Generator().manual_seed(looks))
    assert g.shape == (2, 1, 150, 150) and (g > 0).all()
    assert abs(float(g.mean()) - 1.0) < 0.02                  # E = 1
    assert abs(float(g.var()) * looks - 1.0) < 0.05           # Var = 1 / L


def test_pick_device_is_the_engines_choice():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == resolve_device("auto")[0]
    if not torch.cuda.is_available():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert pick_device("cuda") == torch.device("cpu")
        assert any("CUDA was requested" in str(w.message) for w in caught)
