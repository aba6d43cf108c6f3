"""The learned pre-filter of CFOG (engine/network/prefilter.py, descriptors/learned_cfog.py, train/prefilter.py)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from hsscl.engine.descriptors import get_descriptor
from hsscl.engine.descriptors.cfog import CFOG
from hsscl.engine.descriptors.learned_cfog import LearnedCFOG
from hsscl.engine.errors import WeightsError
from hsscl.engine.network.prefilter import (
    PreFilter,
    PreFilterConfig,
    is_prefilter_file,
    load_prefilter,
    save_prefilter,
)
from hsscl.engine.network.registry import MODELS_DIR, registry_entry, sha256


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _real_crops(mini_cache, size=64, n=2):
    from hsscl.engine.train.data import PairCache

    return PairCache(mini_cache, "all").sample(n, size, torch.Generator().manual_seed(4))


def test_untrained_prefilter_is_the_identity_and_learned_cfog_is_cfog(mini_cache):
    b = _real_crops(mini_cache)
    pf = PreFilter().eval()
    assert torch.equal(pf(b.a), b.a)
    assert torch.allclose(LearnedCFOG(pf)(b.a, b.va), CFOG()(b.a * b.va, b.va), atol=1e-6)


def test_prefilter_keeps_size_and_changes_the_image_once_trained(mini_cache):
    b = _real_crops(mini_cache)
    pf = PreFilter(PreFilterConfig(width=8, dilations=(1, 2))).eval()
    torch.nn.init.normal_(pf.out.weight, std=0.1)
    y = pf(b.a)
    assert y.shape == b.a.shape and not torch.equal(y, b.a)
    with pytest.raises(ValueError):
        pf(torch.zeros(1, 2, 8, 8))


def test_weights_round_trip_and_errors(tmp_path):
    pf = PreFilter(PreFilterConfig(width=8, dilations=(1, 2, 1)))
    torch.nn.init.normal_(pf.out.weight, std=0.1)
    path = tmp_path / "pf.safetensors"
    digest = save_prefilter(pf, path, {"step": 3})
    assert is_prefilter_file(path) and digest == sha256(path)
    back = load_prefilter(path, digest)
    assert back.config == pf.config
    for (k, x), (_, y) in zip(pf.state_dict().items(), back.state_dict().items()):
        assert torch.equal(x, y), k
    with pytest.raises(WeightsError, match="corrupt"):
        load_prefilter(path, "0" * 64)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    assert not is_prefilter_file(bad)
    with pytest.raises(WeightsError, match="not a readable"):
        load_prefilter(bad)
    with pytest.raises(WeightsError, match="not found"):
        load_prefilter(tmp_path / "missing.safetensors")


def test_descriptor_selection_by_name_and_by_weights(tmp_path):
    path = tmp_path / "pf.safetensors"
    save_prefilter(PreFilter(), path)
    assert isinstance(get_descriptor("learned-cfog", str(path)), LearnedCFOG)
    assert isinstance(get_descriptor("auto", str(path)), LearnedCFOG)  # the weights say what they are for
    net = MODELS_DIR / registry_entry("hsscl")["file"]
    with pytest.raises(WeightsError, match="pre-filter"):
        get_descriptor("learned-cfog", str(net))
    with pytest.raises(WeightsError, match="HSSCL network"):
        get_descriptor("hsscl", str(path))


def test_train_prefilter_smoke_excludes_keys_writes_weights_and_resumes(mini_cache, tmp_path):
    from hsscl.engine.train.config import TrainConfig
    from hsscl.engine.train.prefilter import train_prefilter

    cfg = TrainConfig(model="prefilter", cache=str(mini_cache), device="cpu", steps=2, batch=2, crop=64, warmup=1,
                      tm_template=24, tm_radius=6, tm_n=3, val_every=1000, val_batches=1, log_every=1, ckpt_every=1,
                      prefilter={"width": 8, "dilations": [1, 2]}, exclude_keys=("bigearthnet:36_85",),
                      val_keys=("bigearthnet:87_48",))
    out = tmp_path / "run"
    s = train_prefilter(cfg, out, log=lambda m: None)
    assert s["steps"] == 2 and s["sha256"] == sha256(out / "prefilter.safetensors")
    assert s["val_keys"] == ["bigearthnet:87_48"] and s["excluded_keys"] == ["bigearthnet:36_85"]
    assert s["train_pairs"] > 0 and all("36_85" not in k for k in s["val_keys"])
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r and r.get("event") is None]
    assert steps and all(np.isfinite(r["loss"]) and 0 <= r["tm_acc"] <= 1 for r in steps)
    assert not torch.equal(load_prefilter(out / "prefilter.safetensors").out.weight, torch.zeros(1, 8, 1, 1))
    s2 = train_prefilter(replace(cfg, steps=3), out, resume=True, log=lambda m: None)
    assert s2["steps"] == 3
    # publishing installs it under its own name in a registry, checksummed, with its exclusions
    from hsscl.engine.train.publish import publish

    models = tmp_path / "models"
    models.mkdir()
    entry = publish(out, models, best=False)
    reg = json.loads((models / "registry.json").read_text())
    assert reg["models"]["prefilter"] == entry and entry["excluded"] == ["bigearthnet:36_85"]
    load_prefilter(models / entry["file"], entry["sha256"])


def test_prefilter_loss_goes_down_on_a_fixed_real_batch(mini_cache):
    from hsscl.engine.train.config import TrainConfig
    from hsscl.engine.train.data import PairCache
    from hsscl.engine.train.prefilter import prefilter_step

    cfg = TrainConfig(model="prefilter", tm_template=24, tm_radius=6, tm_n=4)
    batch = PairCache(mini_cache, "train").sample(3, 64, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    pf = PreFilter(PreFilterConfig(width=8, dilations=(1, 2)))
    opt = torch.optim.Adam(pf.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss, _ = prefilter_step(pf, batch, cfg, torch.Generator().manual_seed(5), torch.device("cpu"),
                                 augment_inputs=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


# ------------------------------------------------------------------------- residual offsets of pairs
def test_residual_offset_of_a_real_band_pair_shifted_by_a_known_amount(mini_cache):
    """B04 vs B08 of one BigEarthNet patch (registered to ~0.1 px): rolled by (dx, dy) = (2, -1) px, the
    mined offset is (2, -1); unrolled, it is ~0."""
    from hsscl.engine.train.data import PairCache
    from hsscl.engine.train.residual import pair_shift

    c = PairCache(mini_cache, "all")
    k = next(i for i in range(len(c)) if c.kinds[i] == "band-band")
    ia, ib = (int(v) for v in c.pairs[k])
    a, b = c.images[ia][0:1][None].float(), c.images[ib][0:1][None].float()
    va, vb = c.valid[ia][None] > 0, c.valid[ib][None] > 0
    s0, m0, inside0 = pair_shift(a, va, b, vb, 6)
    assert inside0 and np.hypot(*s0) < 0.5 and m0 > 0.05, (s0, m0)
    s, _, inside = pair_shift(a, va, torch.roll(b, shifts=(-1, 2), dims=(-2, -1)), vb, 6)
    assert inside and np.allclose(s, s0 + np.array([2.0, -1.0]), atol=0.25), s


def test_residual_mining_verifies_band_pairs_and_keeps_only_verified_cross_sensor_pairs(mini_cache):
    from hsscl.engine.train.data import PairCache

    c = PairCache(mini_cache, "all", residuals=True)
    recs = c.residual_records
    assert len(recs) == len(PairCache(mini_cache, "all")) and all("verified" in r for r in recs)
    band = [r for r in recs if r["kind"] == "band-band" and r["verified"]]
    assert band and all(np.hypot(*r["shift"]) < 0.6 for r in band)
    # every kept cross-sensor pair is verified; its shift is what sample() adds to the pairing
    cross = [i for i in range(len(c)) if c.kinds[i] != "band-band"]
    assert all(np.isfinite(c.shift[i]).all() for i in cross)
    assert len(c) == sum(r["verified"] or r["kind"] == "band-band" for r in recs)


def test_sampled_crops_follow_the_residual_offset(mini_cache, b_on_a):
    """A pair (image, image rolled by s) with its residual s: b resampled at the known H q equals a at q
    (the sign convention of the offset through sample(), both orders of the pair)."""
    from hsscl.engine.train.data import PairCache

    c = PairCache(mini_cache, "all")
    i = int(c.pairs[0, 0])
    j = max(c.images) + 1
    c.images[j] = torch.roll(c.images[i], shifts=(-1, 2), dims=(-2, -1))   # ground at x in i is at x + (2, -1) in j
    c.valid[j] = c.valid[i]
    c.group[j] = []
    c.modality = torch.cat([c.modality, c.modality[i:i + 1]])
    c.domain = torch.cat([c.domain, c.domain[i:i + 1]])
    c.pairs = np.array([[i, j]])
    c.kinds, c.sources, c.keys = c.kinds[:1], c.sources[:1], c.keys[:1]
    c.shift = np.array([[2.0, -1.0]])
    c.weights = torch.ones(1, dtype=torch.float64)
    b = c.sample(6, 64, torch.Generator().manual_seed(1), p_denoised=1.0, p_band_mix=0.0)
    bw, ok = b_on_a(b)
    ok[..., :4, :] = False  # the rolled image wraps around at its border
    ok[..., -4:, :] = False
    ok[..., :, :4] = False
    ok[..., :, -4:] = False
    err = (bw - b.a)[ok].abs().mean()
    assert float(err) < 0.1 * float(b.a[ok].std())


# ---------------------------------------------------------------------------------- shipped weights
def test_shipped_prefilter_matches_the_registry_and_is_trained():
    from pathlib import Path

    entry = registry_entry("prefilter")
    path = MODELS_DIR / entry["file"]
    assert sha256(path) == entry["sha256"] and entry["parameters"] == load_prefilter(path).n_parameters()
    d = LearnedCFOG.from_weights()
    assert d.info["version"] == entry["version"]
    assert float(d.prefilter.out.weight.detach().abs().sum()) > 0  # not the identity it starts from
    # trained without the held-out benchmark's locations
    assert {"3mos:SEN_city_01", "terramesh:609U_541L_3_0"} <= set(entry["excluded"])
    assert Path(entry["file"]).suffix == ".safetensors"


def test_learned_cfog_registers_the_real_sample_pair():
    """The S2 / S1 sample (resources/sample, known similarity) through the whole pipeline with the shipped
    pre-filter: within 1 px RMSE of the truth on a grid of checkpoints."""
    from pathlib import Path

    from hsscl.engine import pipeline
    from hsscl.engine.config import CoregConfig

    repo = Path(__file__).resolve().parents[2]
    est = pipeline.estimate(repo / "resources" / "sample" / "s2_reference.tif",
                            repo / "resources" / "sample" / "s1_target_misregistered.tif",
                            CoregConfig(descriptor="learned-cfog", threads=1))
    assert est.report["descriptor"] == "learned-cfog"
    truth = json.loads((repo / "resources" / "sample" / "truth.json").read_text())
    M = np.array(truth["target_to_reference_pixel"])
    xy = np.stack(np.meshgrid(np.arange(40, 400, 40) + 0.5, np.arange(40, 400, 40) + 0.5), -1).reshape(-1, 2)
    back = est.correction.model(xy) @ M[:, :2].T + M[:, 2]
    err = float(np.sqrt(((back - xy) ** 2).sum(1).mean()))
    assert err < 1.0, f"{err:.2f} px"
