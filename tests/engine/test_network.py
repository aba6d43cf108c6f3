"""The HSSCL network, its weights, its descriptor adapter and its training, on small real data.

Pure torch on CPU, seeded. The training tests build a tiny cache from the BigEarthNet example pairs
(redistributable) and train a handful of steps on 64 px crops.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hsscl.engine.descriptors import get_descriptor
from hsscl.engine.descriptors.hsscl import HSSCLDescriptor
from hsscl.engine.errors import WeightsError
from hsscl.engine.network import HSSCLNet, NetConfig
from hsscl.engine.network.registry import load_registered, load_weights, registry_entry, save_weights, sha256
from hsscl.engine.network.stems import modality_ids

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def tiny_net(seed: int = 0) -> HSSCLNet:
    torch.manual_seed(seed)
    return HSSCLNet(NetConfig()).eval()


# ------------------------------------------------------------------------------------------ network
def test_three_levels_have_their_strides_and_unit_norm():
    net = tiny_net()
    x = torch.randn(2, 1, 64, 96)
    out = net(x, modality_ids(["sar", "optical"]))
    assert set(out) == {"fine", "mid", "coarse"}
    for name, stride in net.config.strides.items():
        f = out[name]
        assert f.shape == (2, net.config.dims[("fine", "mid", "coarse").index(name)], 64 // stride, 96 // stride)
        assert torch.allclose(torch.linalg.vector_norm(f, dim=1), torch.ones(()), atol=1e-4)
    assert net.config.strides["fine"] <= 4 and net.config.strides["mid"] == 8 and net.config.strides["coarse"] >= 16


def test_input_checks():
    net = tiny_net()
    with pytest.raises(ValueError):
        net(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError):
        net(torch.zeros(1, 1, 40, 32))  # not a multiple of 16


def test_modality_embedding_changes_the_features_and_unknown_is_default():
    net = tiny_net()
    with torch.no_grad():
        net.stem.scale.weight[0] += 0.5  # a trained embedding differs per modality
    x = torch.randn(1, 1, 32, 32)
    sar = net(x, modality_ids(["sar"]))["fine"]
    unk = net(x)["fine"]
    assert torch.allclose(unk, net(x, modality_ids(["?"]))["fine"])
    assert not torch.allclose(sar, unk)


def test_adapter_dense_map_at_input_resolution_l2_normalised_zero_where_invalid():
    d = HSSCLDescriptor(tiny_net())
    x = torch.randn(2, 1, 50, 70)
    valid = torch.ones(2, 1, 50, 70, dtype=torch.bool)
    valid[:, :, :, :10] = False
    out = d(x, valid)
    assert out.shape == (2, d.channels, 50, 70) and d.channels == sum(NetConfig().dims)
    n = torch.linalg.vector_norm(out, dim=1)
    assert torch.allclose(n[:, :, 20:], torch.ones(()), atol=1e-4)
    assert float(n[:, :, :8].abs().max()) == 0.0
    assert torch.equal(out, d(x, valid))  # deterministic


def test_dense_levels_are_placed_on_pixel_centres():
    """A level map upsampled by the adapter's rule puts index j at pixel (j + 0.5) * stride."""
    net = tiny_net()
    mid = torch.zeros(1, 8, 4, 4)
    mid[0, 0, 1, 2] = 1.0  # mid level, stride 8: centre at pixel (2.5 * 8, 1.5 * 8) = (20, 12)
    levels = {"fine": torch.zeros(1, 8, 16, 16), "mid": mid, "coarse": torch.zeros(1, 8, 2, 2)}
    dense = net.dense(levels, (32, 32))[0, 8]
    iy, ix = divmod(int(dense.argmax()), 32)
    assert (ix + 0.5, iy + 0.5) in {(19.5, 11.5), (20.5, 11.5), (19.5, 12.5), (20.5, 12.5)}


# ------------------------------------------------------------------------------------------ weights
def test_weights_round_trip_through_safetensors_and_registry(tmp_path):
    net = tiny_net(3)
    path = tmp_path / "w.safetensors"
    digest = save_weights(net, path)
    assert digest == sha256(path)
    back = load_weights(path, expected_sha256=digest)
    x = torch.randn(1, 1, 32, 32)
    a, b = net(x), back(x)
    for k in a:
        assert torch.equal(a[k], b[k])
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"format": 1, "models": {"hsscl": {"file": path.name, "sha256": digest}}}))
    model, entry = load_registered("hsscl", reg)
    assert entry["sha256"] == digest and isinstance(model, HSSCLNet)


def test_corrupt_missing_or_foreign_weights_raise_weights_error(tmp_path):
    net = tiny_net()
    path = tmp_path / "w.safetensors"
    digest = save_weights(net, path)
    bad = tmp_path / "bad.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum"):
        load_weights(bad, expected_sha256=digest)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="readable"):
        load_weights(trunc)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(3)}, str(foreign))
    with pytest.raises(WeightsError):
        load_weights(foreign)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"stem.conv.weight": torch.zeros(3)}, str(wrong),
              metadata={"format": "hsscl-net-1", "net_config": json.dumps(NetConfig().to_dict())})
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(wrong)
    with pytest.raises(WeightsError):
        get_descriptor("hsscl", weights=str(tmp_path / "none.safetensors"))
    with pytest.raises(WeightsError, match="No network weights"):
        registry_entry("nope", tmp_path / "missing_registry.json") if False else registry_entry(
            "nope", _write(tmp_path / "r.json", {"models": {}}))


def _write(p: Path, obj) -> Path:
    p.write_text(json.dumps(obj))
    return p


def test_shipped_weights_match_the_registry():
    reg = REPO / "resources" / "models" / "registry.json"
    if not reg.is_file():
        pytest.skip("no shipped network weights yet")
    entry = registry_entry("hsscl", reg)
    f = reg.parent / entry["file"]
    assert f.stat().st_size < 5e6
    assert sha256(f) == entry["sha256"]
    d = get_descriptor("hsscl")
    assert d.name == "hsscl" and d.channels == sum(NetConfig.from_dict(entry["net_config"]).dims)
    assert NetConfig.from_dict(entry["net_config"]) == load_weights(f, entry["sha256"]).config
    assert get_descriptor("auto").name == "cfog"  # the default stays CFOG until the network beats it


# ----------------------------------------------------------------------------------------- pipeline
@pytest.mark.slow
def test_hsscl_descriptor_in_the_pipeline_on_a_real_pair(tmp_path):
    """CoregConfig(descriptor="hsscl") runs through the unchanged pipeline on the S2/S1 sample pair."""
    from hsscl.engine import pipeline
    from hsscl.engine.config import CoregConfig
    from hsscl.engine.errors import NotEnoughMatchesError

    ref = REPO / "resources" / "sample" / "s2_reference.tif"
    tgt = REPO / "resources" / "sample" / "s1_target_misregistered.tif"
    weights = None
    if not (REPO / "resources" / "models" / "registry.json").is_file():
        weights = str(tmp_path / "w.safetensors")
        save_weights(tiny_net(), weights)
    cfg = CoregConfig(descriptor="hsscl", weights=weights, threads=2)
    try:
        est = pipeline.estimate(ref, tgt, cfg)
    except NotEnoughMatchesError:
        if weights is not None:
            return  # untrained weights may rightly find no consistent alignment
        raise
    assert est.report["descriptor"] == "hsscl"
    truth = json.loads((REPO / "resources" / "sample" / "truth.json").read_text())
    M = np.array(truth["target_to_reference_pixel"])
    xy = np.stack(np.meshgrid(np.arange(40, 400, 40) + 0.5, np.arange(40, 400, 40) + 0.5), -1).reshape(-1, 2)
    tgt_xy = est.correction.model(xy)            # reference px -> target px
    back = tgt_xy @ M[:, :2].T + M[:, 2]         # -> reference px again
    err = np.sqrt(((back - xy) ** 2).sum(1).mean())
    assert np.isfinite(err)
    if weights is None:
        assert err < 3.0, f"shipped HSSCL weights: {err:.2f} px RMSE on the sample pair"


# ----------------------------------------------------------------------------------------- training
def _cfg(cache: Path, **kw):
    from hsscl.engine.train.config import TrainConfig

    base = TrainConfig(cache=str(cache), device="cpu", steps=3, batch=3, crop=64, points=(48, 24, 12),
                       warmup=1, val_every=1000, val_batches=1, log_every=1, ckpt_every=2, mining_start=2.0)
    return replace(base, **kw)


def test_training_data_correspondences_are_exact(mini_cache, b_on_a):
    """Resampling b at the known H q gives back a at q (same image on both sides)."""
    from hsscl.engine.train.data import PairCache

    c = PairCache(mini_cache, "all")
    c.pairs = np.stack([c.pairs[:, 0], c.pairs[:, 0]], 1)
    b = c.sample(4, 64, torch.Generator().manual_seed(1), p_denoised=1.0, p_band_mix=0.0)
    bw, ok = b_on_a(b)
    err = (bw - b.a)[ok].abs().mean()
    assert float(err) < 0.1 * float(b.a[ok].std())


def test_loss_is_finite_and_decreases_on_a_fixed_batch(mini_cache):
    from hsscl.engine.train.data import PairCache
    from hsscl.engine.train.loop import step_losses

    cfg = _cfg(mini_cache)
    c = PairCache(mini_cache, "train")
    batch = c.sample(3, 64, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = HSSCLNet().train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss, terms = step_losses(net, batch, cfg, torch.Generator().manual_seed(5), torch.device("cpu"),
                                  augment_inputs=False)
        assert torch.isfinite(loss) and all(np.isfinite(v) for v in terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def test_mined_positives_run_and_stay_bounded(mini_cache):
    from hsscl.engine.train.data import PairCache
    from hsscl.engine.train.loop import step_losses

    cfg = _cfg(mini_cache, mining_max_shift_px=3.0)
    batch = PairCache(mini_cache, "train").sample(3, 64, torch.Generator().manual_seed(0))
    loss, terms = step_losses(HSSCLNet(), batch, cfg, torch.Generator().manual_seed(1), torch.device("cpu"),
                              mining=True)
    assert torch.isfinite(loss) and 0 <= terms["mined_rate"] <= 1 and terms["mined_shift_px"] <= 3.0 * 1.5


def test_train_smoke_writes_weights_checkpoint_log_and_resumes(mini_cache, tmp_path):
    from hsscl.engine.train.loop import train

    out = tmp_path / "run"
    s = train(_cfg(mini_cache, steps=2), out, log=lambda m: None)
    assert s["steps"] == 2 and s["sha256"] == sha256(out / "hsscl.safetensors")
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "step" in r and "loss" in r and r.get("event") is None]
    assert {"nce_fine", "nce_mid", "nce_coarse", "coral", "loss"} <= set(steps[0])
    assert all(np.isfinite(r["loss"]) for r in steps)
    load_weights(out / "hsscl.safetensors", s["sha256"])
    s2 = train(_cfg(mini_cache, steps=3), out, resume=True, log=lambda m: None)
    assert s2["steps"] == 3


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.json")), ids=lambda p: p.name)
def test_shipped_training_configs_load_and_keep_the_heldout_locations_out(path):
    """Every config in configs/ is valid (unknown keys are an error), starts from a file that exists, and a
    config with exclusions keeps out every held-out location the 0.2.0 recipe keeps out."""
    from hsscl.engine.train.config import TrainConfig

    cfg = TrainConfig.load(path)
    if cfg.init_weights:
        assert (REPO / cfg.init_weights).is_file(), cfg.init_weights
    if cfg.exclude_keys:
        reference = TrainConfig.load(REPO / "configs" / "hsscl_tm_cpu.json").exclude_keys
        assert set(reference) <= set(cfg.exclude_keys), sorted(set(reference) - set(cfg.exclude_keys))
        assert not set(cfg.val_keys) & set(cfg.exclude_keys)


def test_dense_weights_are_trained_with_and_saved_in_the_weights(mini_cache, tmp_path):
    """`dense_weights` (1, 0, 0): the matcher's map of the trained network is its fine level alone, as saved."""
    from hsscl.engine.train.loop import train

    train(_cfg(mini_cache, steps=1, dense_weights=(1.0, 0.0, 0.0), tm_weight=0.5), tmp_path / "run",
          log=lambda m: None)
    model = load_weights(tmp_path / "run" / "hsscl.safetensors")
    assert model.config.weights == (1.0, 0.0, 0.0)
    x = torch.rand(1, 1, 48, 64)
    assert torch.allclose(HSSCLDescriptor(model)(x), HSSCLDescriptor(model, levels=("fine",))(x), atol=1e-6)


@pytest.mark.slow
def test_training_is_deterministic_with_a_seed(mini_cache, tmp_path):
    from hsscl.engine.train.loop import train

    a = train(_cfg(mini_cache, steps=2, seed=7), tmp_path / "a", log=lambda m: None)
    b = train(_cfg(mini_cache, steps=2, seed=7), tmp_path / "b", log=lambda m: None)
    wa, wb = load_weights(tmp_path / "a" / "hsscl.safetensors"), load_weights(tmp_path / "b" / "hsscl.safetensors")
    for (k, x), (_, y) in zip(wa.state_dict().items(), wb.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), k
    assert a["last_log"]["loss"] == pytest.approx(b["last_log"]["loss"], rel=1e-6)


def test_single_level_descriptors_for_the_ablation():
    """'hsscl-mid' etc. keep only that level's channels (the others are zero), still unit norm."""
    torch.manual_seed(0)
    full = HSSCLDescriptor(HSSCLNet(NetConfig()))
    mid = HSSCLDescriptor(HSSCLNet(NetConfig()), levels=("mid",))
    mid.model.load_state_dict(full.model.state_dict())
    x = torch.rand(1, 1, 48, 64)
    d_full, d_mid = full(x), mid(x)
    dims = full.model.config.dims
    assert mid.name == "hsscl-mid" and full.name == "hsscl"
    assert d_mid[:, :dims[0]].abs().max() == 0 and d_mid[:, dims[0] + dims[1]:].abs().max() == 0
    assert torch.allclose(d_mid.norm(dim=1), torch.ones(1, 48, 64), atol=1e-4)
    assert not torch.allclose(d_mid, d_full)
    assert get_descriptor("hsscl-coarse").levels == ("coarse",)
    with pytest.raises(ValueError):
        HSSCLDescriptor(HSSCLNet(NetConfig()), levels=("texture",))


def test_hybrid_descriptor_is_cfog_beside_the_weighted_fine_level():
    from hsscl.engine.descriptors.cfog import CFOG
    from hsscl.engine.descriptors.hybrid import HybridDescriptor

    torch.manual_seed(0)
    net = HSSCLDescriptor(HSSCLNet(NetConfig()), levels=("fine",))
    hyb = HybridDescriptor(net, weight=0.5)
    x = torch.rand(1, 1, 48, 64)
    valid = torch.ones(1, 1, 48, 64, dtype=torch.bool)
    valid[..., :8] = False
    d = hyb(x, valid)
    assert d.shape == (1, hyb.channels, 48, 64) and hyb.channels == 9 + net.channels
    assert torch.equal(d[:, :9], CFOG()(x, valid))
    assert torch.allclose(d[:, 9:], 0.5 * net(x, valid))
    assert float(d[..., :6].abs().max()) == 0.0  # invalid pixels stay zero in both parts
    assert get_descriptor("hybrid").name == "hybrid"


# ------------------------------------------------------------------------------ template-matching loss
def test_template_zncc_equals_the_matchers_masked_zncc(mini_cache):
    """The differentiable ZNCC of the loss is the statistic the engine's matcher computes (CFOG of real crops)."""
    from hsscl.engine.descriptors.cfog import CFOG
    from hsscl.engine.matching.ncc import masked_zncc
    from hsscl.engine.train.data import PairCache
    from hsscl.engine.train.losses import template_zncc

    b = PairCache(mini_cache, "all").sample(3, 64, torch.Generator().manual_seed(2))
    da, db = CFOG()(b.a), CFOG()(b.b)
    t, s = da[:, :, 12:44, 12:44], db[:, :, 4:52, 4:52]
    ours = template_zncc(t, s)
    ref, _ = masked_zncc(t, torch.ones_like(t[:, :1], dtype=torch.bool), s, torch.ones_like(s[:, :1], dtype=torch.bool))
    assert ours.shape == ref.shape == (3, 17, 17)
    assert torch.allclose(ours, ref, atol=1e-4)


def test_template_loss_finds_the_known_warp_and_ranks_a_wrong_one_worse(mini_cache):
    """Same real image on both sides through a known random warp: the templates' peaks are at the true
    shift and the loss is low; with the warp shifted by 5 px the accuracy collapses and the loss rises."""
    from hsscl.engine.descriptors.cfog import CFOG
    from hsscl.engine.train.data import PairCache
    from hsscl.engine.train.losses import template_loss

    c = PairCache(mini_cache, "all")
    c.pairs = np.stack([c.pairs[:, 0], c.pairs[:, 0]], 1)
    b = c.sample(4, 96, torch.Generator().manual_seed(3), p_denoised=1.0, p_band_mix=0.0)
    da, db = CFOG()(b.a, b.va), CFOG()(b.b, b.vb)
    good, st = template_loss(da, b.va, db, b.vb, b.H, torch.Generator().manual_seed(0), template=24, radius=6, n=6)
    H_bad = b.H.clone()
    H_bad[:, 0, 2] += 5.0
    bad, st_bad = template_loss(da, b.va, db, b.vb, H_bad, torch.Generator().manual_seed(0), template=24, radius=6,
                                n=6)
    assert st["n"] > 0 and st["acc"] > 0.9, st
    assert st_bad["acc"] < 0.2 and float(bad) > float(good) + 1.0, (float(good), float(bad), st_bad)
    # a soft target around the true shift: still low at the truth, and a 5 px error still costs
    soft, _ = template_loss(da, b.va, db, b.vb, b.H, torch.Generator().manual_seed(0), template=24, radius=6, n=6,
                            label_sigma=1.0)
    soft_bad, _ = template_loss(da, b.va, db, b.vb, H_bad, torch.Generator().manual_seed(0), template=24, radius=6,
                                n=6, label_sigma=1.0)
    assert float(soft_bad) > float(soft) + 1.0, (float(soft), float(soft_bad))


def test_template_loss_trains_the_network_and_the_hybrid_field(mini_cache):
    """Both template terms are logged, finite and give gradients to the network."""
    from hsscl.engine.train.data import PairCache
    from hsscl.engine.train.loop import step_losses

    cfg = _cfg(mini_cache, crop=64, tm_weight=0.5, tm_hybrid_weight=1.0, tm_template=24, tm_radius=6, tm_n=3)
    batch = PairCache(mini_cache, "train").sample(3, 64, torch.Generator().manual_seed(0))
    net = HSSCLNet().train()
    loss, terms = step_losses(net, batch, cfg, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert {"tm_net", "tm_hyb", "tm_acc_net", "tm_acc_hyb"} <= set(terms)
    assert all(np.isfinite(v) for v in terms.values())
    loss.backward()
    g = net.fine.local.weight.grad
    assert g is not None and float(g.abs().sum()) > 0
