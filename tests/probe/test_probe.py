"""Probe harness: frozen means frozen, layer dimensions, heads that learn, the feature cache, kNN."""

from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import CONF, tiny_overrides
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ssl_bench.data.images import SkipCounter
from ssl_bench.models.alexnet import CONV_LAYERS, alexnet, alexnet_small
from ssl_bench.probe.feature_cache import trunk_fingerprint
from ssl_bench.probe.heads import FeatureExtractor, GlobalBatchNorm1d, LinearProbe, ProbeHeads, resize_layer
from ssl_bench.probe.knn import knn_predict, topk_accuracy
from ssl_bench.runs.probe import Features, feature_loader, split_holdout

# the probes' per-layer pooling table, as every probe config includes it
POOLING = OmegaConf.to_container(OmegaConf.load(CONF / "probe" / "pooling" / "alexnet.yaml"))


def extractor(trunk, layers, resize="bilinear"):
    return FeatureExtractor(trunk, layers, resize, "L", pooling=POOLING)


def tiny_trunk(**kw):
    torch.manual_seed(0)
    return alexnet_small(widths=(16, 32, 48, 48, 32), fc_channels=64, **kw)


def image_batches(n=24, size=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 3
    batches = [{"image": imgs[i:i + 8], "label": labels[i:i + 8], "skipped": []} for i in range(0, n, 8)]
    return DataLoader(batches, batch_size=None)


def test_frozen_trunk_is_bit_identical_after_probing(tmp_path):
    trunk = tiny_trunk()
    trunk.train()  # even a trunk handed over in train mode must not update its BN statistics
    before = copy.deepcopy(trunk.state_dict())
    ex = extractor(trunk, CONV_LAYERS)
    assert all(not p.requires_grad for p in trunk.parameters())
    probe = LinearProbe(ProbeHeads(ex.dims(56), 3), lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), 3, extractor=ex)
    probe.train()
    assert not trunk.training
    start = copy.deepcopy(probe.heads.state_dict())
    batches = image_batches()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(probe, train_dataloaders=batches, val_dataloaders=batches)
    after = trunk.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} moved"
    assert any("running_mean" in k for k in before)  # the BN statistics were part of the check
    # while every head's classifier moved away from its own starting weights
    trained = probe.heads.state_dict()
    weights = [k for k in start if k.endswith(".1.weight")]
    assert len(weights) == len(CONV_LAYERS)
    for k in weights:
        assert not torch.equal(start[k], trained[k]), f"{k} did not train"
    assert trainer.global_step == 6


def test_optimiser_holds_only_head_parameters():
    ex = extractor(tiny_trunk(), ("conv1", "conv2"))
    probe = LinearProbe(ProbeHeads(ex.dims(56), 4, lrs=[0.5, 0.01]), lambda g: torch.optim.SGD(g, lr=0.1), 4,
                        extractor=ex)
    opt = probe.configure_optimizers()
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {"conv1@0.5": 0.5, "conv1@0.01": 0.01,
                                                              "conv2@0.5": 0.5, "conv2@0.01": 0.01}
    trunk_ids = {id(p) for p in ex.trunk.parameters()}
    assert not trunk_ids & {id(p) for g in opt.param_groups for p in g["params"]}


# Feature dimensions of the faithful AlexNet (widths 96-256-384-384-256), worked out by hand.
# bilinear resizes to a fixed side whatever the crop (docs/protocols.md §3.1):
#   conv1 10*10*96 = 9600, conv2 6*6*256 = 9216, conv3 and conv4 5*5*384 = 9600, conv5 6*6*256 = 9216.
BILINEAR_DIMS = {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}
# avgpool (Goyal et al.: conv1 k19 s4, conv2 k12 s3, conv3/conv4 k9 s1, conv5 k8 s1) on the map sizes
# of the trunk's geometry: conv1 11x11 stride 4 pad 5 gives floor((crop + 10 - 11) / 4) + 1, and each
# of pool1/pool2 (3x3 stride 2 pad 1) gives floor((h - 1) / 2) + 1; conv2..conv5 keep the size.
#   crop 227: conv1 57, conv2 29, conv3-5 15 -> pooled sides floor((57-19)/4)+1 = 10,
#     floor((29-12)/3)+1 = 6, 15-9+1 = 7, 15-8+1 = 8:
#     conv1 10*10*96 = 9600, conv2 6*6*256 = 9216, conv3/4 7*7*384 = 18816, conv5 8*8*256 = 16384.
#   crop 180: conv1 45, conv2 23, conv3-5 12 -> sides floor(26/4)+1 = 7, floor(11/3)+1 = 4, 4, 5:
#     conv1 7*7*96 = 4704, conv2 4*4*256 = 4096, conv3/4 4*4*384 = 6144, conv5 5*5*256 = 6400.
AVGPOOL_DIMS = {227: {"conv1": 9600, "conv2": 9216, "conv3": 18816, "conv4": 18816, "conv5": 16384},
                180: {"conv1": 4704, "conv2": 4096, "conv3": 6144, "conv4": 6144, "conv5": 6400}}


@pytest.mark.parametrize("crop", [227, 180])
def test_layer_dimensions_bilinear_and_avgpool(crop):
    trunk = alexnet()
    assert extractor(trunk, CONV_LAYERS).dims(crop) == BILINEAR_DIMS
    assert extractor(trunk, CONV_LAYERS, "avgpool").dims(crop) == AVGPOOL_DIMS[crop]


def test_avgpool_on_too_small_map_and_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="probe.resize=avgpool"):
        resize_layer(torch.zeros(1, 8, 4, 4), "conv3", "avgpool", (9, 1))
    with pytest.raises(ValueError, match="probe.resize"):
        resize_layer(torch.zeros(1, 8, 4, 4), "conv3", "nearest", 5)
    with pytest.raises(ValueError, match="probe.resize"):
        FeatureExtractor(tiny_trunk(), ["conv1"], "nearest", "L", pooling=POOLING)
    with pytest.raises(ValueError, match=r"probe.pooling.bilinear has no entry for layer.*'conv5'"):
        FeatureExtractor(tiny_trunk(), CONV_LAYERS, "bilinear", "L", pooling={"bilinear": {"conv1": 10}})


def test_heads_learn_a_linear_rule(tmp_path):
    """Labels are argmax of a fixed linear map of the conv2 features: a linear head must find it."""
    g = torch.Generator().manual_seed(0)
    n, d, c = 1200, 64, 4
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, c, generator=g)
    y = (x @ w).argmax(1)
    feats = {"conv2": x.numpy().astype(np.float16), "conv4": torch.randn(n, 8, generator=g).numpy().astype(np.float16)}
    probe = LinearProbe(ProbeHeads({"conv2": d, "conv4": 8}, c),
                        lambda gr: torch.optim.SGD(gr, lr=0.1, momentum=0.9), c)
    train = feature_loader(feats, y.numpy(), 100, True, np.arange(1000))
    test = feature_loader(feats, y.numpy(), 100, False, np.arange(1000, n))
    trainer = pl.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(probe, train, test)
    m = trainer.callback_metrics
    assert m["probe/conv2/top1"] > 90  # the rule is linear in conv2
    assert m["probe/conv4/top1"] < 50  # and unrelated to the noise "conv4" (chance 25%)
    assert m["probe/conv2/top5"] == 100  # only 4 classes


def test_feature_cache_hits_misses_and_never_reuses_other_trunks(tmp_path):
    loader = image_batches()

    def features(trunk, layers):
        ex = extractor(trunk, layers)
        return Features(ex, trunk_fingerprint(trunk), "t", tmp_path, "fp", SkipCounter())

    trunk = tiny_trunk()
    f1 = features(trunk, ("conv1", "conv3"))
    x1, y1 = f1.get("train", loader, 24)
    assert (f1.hits, f1.misses) == (0, 1)
    f2 = features(trunk, ("conv3",))
    x2, y2 = f2.get("train", loader, 24)
    assert (f2.hits, f2.misses) == (1, 0)
    assert np.array_equal(x1["conv3"], x2["conv3"]) and np.array_equal(y1, y2)
    # the cached values are the extractor's own outputs (float16)
    direct = extractor(trunk, ("conv3",))(torch.cat([b["image"] for b in loader.dataset]))["conv3"]
    assert np.allclose(x2["conv3"].astype(np.float32), direct.numpy(), atol=2e-3 * float(direct.abs().max()))
    other = copy.deepcopy(trunk)
    with torch.no_grad():
        other.conv3[0].weight.add_(1e-3)
    f3 = features(other, ("conv3",))
    x3, _ = f3.get("train", loader, 24)
    assert (f3.hits, f3.misses) == (0, 1) and not np.array_equal(x3["conv3"], x1["conv3"])
    f4 = features(trunk, ("conv1", "conv5"))  # conv5 missing: extracted and added, conv1 kept
    f4.get("train", loader, 24)
    assert f4.misses == 1
    f5 = features(trunk, ("conv1", "conv3", "conv5"))
    f5.get("train", loader, 24)
    assert f5.hits == 1
    assert not list(tmp_path.glob(".*")), "no temporary cache folders left"


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    tr, te = torch.randn(60, 5, generator=g), torch.randn(15, 5, generator=g)
    ty = torch.randint(0, 3, (60,), generator=g)
    scores = knn_predict(tr, ty, te, 3, k=7, temperature=0.1, chunk=4)
    for i in range(15):
        sims = [float(np.dot(te[i], tr[j]) / (np.linalg.norm(te[i]) * np.linalg.norm(tr[j]))) for j in range(60)]
        nn_idx = np.argsort(sims)[::-1][:7]
        votes = np.zeros(3)
        for j in nn_idx:
            votes[ty[j]] += np.exp(sims[j] / 0.1)
        assert np.allclose(scores[i].numpy(), votes, rtol=1e-4)
    assert topk_accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]), 1) == 50.0


def test_holdout_split_is_disjoint_and_deterministic():
    fit, hold = split_holdout(list(range(100)), 0.1, 0)
    assert len(hold) == 10 and not set(fit) & set(hold) and sorted(fit + hold) == list(range(100))
    assert split_holdout(list(range(100)), 0.1, 0) == (fit, hold)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_data, tmp_path_factory):
    from ssl_bench.cli import main
    out = tmp_path_factory.mktemp("pre") / "run"
    try:
        main(["pretrain", *tiny_overrides(tiny_data, out, out.parent / "cache")])
    except SystemExit as e:  # the CLI may end with sys.exit(0)
        assert not e.code
    return out / "checkpoints" / "last.ckpt"


def probe_overrides(data: Path, out: Path) -> list[str]:
    return [f"data.root={data}", "data.synthetic=null", "data.num_workers=0", f"paths.cache_dir={out.parent}/cache",
            f"hydra.run.dir={out}", "probe.batch_size=32", "trainer.enable_progress_bar=false",
            "backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=64"]


@pytest.mark.slow
def test_probe_cli_linear_knn_and_gaussian(tiny_data, tiny_checkpoint, tmp_path, run_cli):
    out = tmp_path / "lin"
    assert run_cli("probe", f"checkpoint={tiny_checkpoint}", "probe.epochs=2", *probe_overrides(tiny_data, out)) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "probe" and res["method"] == "colorization/full" and res["trunk"]["input_space"] == "L"
    assert set(res["chosen_lr"]) == set(CONV_LAYERS) and res["feature_cache"]["misses"] == 2
    for l, lr in res["chosen_lr"].items():  # the reported head is the one that won on the holdout
        assert res["metrics"][f"probe/{l}/top1"] == res["all_heads"][f"probe/test/{l}@{lr:g}/top1"]
        assert res["metrics"][f"probe/{l}/holdout_top1"] == max(
            res["all_heads"][f"probe/holdout/{l}@{g:g}/top1"] for g in (0.01, 0.1))
    for l in CONV_LAYERS:
        assert 0 <= res["metrics"][f"probe/{l}/top1"] <= res["metrics"][f"probe/{l}/top5"] <= 100
    assert res["best_layer"] in CONV_LAYERS
    out2 = tmp_path / "knn"
    assert run_cli("probe", f"checkpoint={tiny_checkpoint}", "probe=knn", *probe_overrides(tiny_data, out2)) == 0
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["probe"] == "knn" and res2["feature_cache"] == {"enabled": True, "hits": 2, "misses": 0}
    out3 = tmp_path / "gauss"
    assert run_cli("probe", "init=gaussian", "backbone.in_channels=3", "backbone.input_space=rgb", "probe.epochs=1",
                   *probe_overrides(tiny_data, out3)) == 0
    assert json.loads((out3 / "results.json").read_text())["method"] == "gaussian/rgb"


@pytest.mark.slow
def test_probe_bad_requests_fail_before_work(tiny_data, tiny_checkpoint, tmp_path, run_cli, capsys):
    base = probe_overrides(tiny_data, tmp_path / "x")
    assert run_cli("probe", f"checkpoint={tiny_checkpoint}", "probe.layers=[conv9]", *base) == 2
    assert "conv9" in capsys.readouterr().err
    assert run_cli("probe", f"checkpoint={tiny_checkpoint}", "probe.num_classes=7", *base) == 2
    assert "probe.num_classes=7" in capsys.readouterr().err
    assert run_cli("probe", f"checkpoint={tmp_path}/missing.ckpt", *base) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    assert run_cli("probe", *base) == 2
    assert "checkpoint=PATH" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "features").exists(), "bad requests fail before any extraction"


@pytest.mark.slow
def test_svm_voc07_probe_on_generated_voc_tree(tiny_checkpoint, tmp_path, run_cli, monkeypatch):
    args = ["probe=svm_voc07", "probe.voc_root=synthetic", "probe.synthetic.num_trainval=100",
            "probe.synthetic.num_test=60", "probe.synthetic.image_size=64", "probe.crop_size=56",
            "probe.layers=[conv2,conv5]", "probe.costs=[0.01,0.1,1.0]", "probe.num_workers=0",
            f"paths.data_dir={tmp_path}/data", f"paths.cache_dir={tmp_path}/cache"]
    out = tmp_path / "svm"
    code = run_cli("probe", f"checkpoint={tiny_checkpoint}", *args, f"hydra.run.dir={out}")
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["probe"] == "svm_voc07" and res["dataset"]["num_train"] == 100
    for l in ("conv2", "conv5"):
        assert 0 < res["metrics"][f"voc07/svm/{l}/mAP"] <= 100
        assert len(res["per_class"][l]["ap"]) == 20
        counts = res["per_class"][l]["not_converged"]
        assert len(counts) == 20 and res["metrics"][f"voc07/svm/{l}/not_converged"] == sum(counts)

    # probe.max_iter=1 stops every fit (scikit-learn flags a fit that used all its iterations): per
    # layer 20 classes x (3 folds x 3 costs + 1 refit) = 200.  probe.shared_dir reaches the workers'
    # copies: every temporary folder of the SVM is made there.
    shared = tmp_path / "shared"
    shared.mkdir()
    made = []
    mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*a, **kw):
        if kw.get("prefix") == "ssl_bench_svm_":
            made.append(str(kw.get("dir")))
        return mkdtemp(*a, **kw)

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    out = tmp_path / "svm_short"
    with pytest.warns(UserWarning, match="fits stopped at") as caught:
        code = run_cli("probe", f"checkpoint={tiny_checkpoint}", *args, "probe.max_iter=1", "probe.n_jobs=2",
                       f"probe.shared_dir={shared}", f"hydra.run.dir={out}")
    assert code == 0
    stops = [str(w.message) for w in caught if "fits stopped at" in str(w.message)]
    assert [m.split(":")[0] for m in stops] == ["VOC07 SVM, layer conv2", "VOC07 SVM, layer conv5"]
    for m in stops:
        assert re.search(r": 200 of 200 fits stopped at probe.max_iter=1 "
                         r"\(per class: aeroplane 10, bicycle 10, .*, tvmonitor 10\)$", m), m
    res = json.loads((out / "results.json").read_text())
    for l in ("conv2", "conv5"):
        assert res["per_class"][l]["not_converged"] == [10] * 20
        assert res["metrics"][f"voc07/svm/{l}/not_converged"] == 200
    assert made == [str(shared)] * 2 and not list(shared.iterdir())


@pytest.mark.slow
def test_streaming_probe_uses_random_crops_and_no_cache(tiny_data, tiny_checkpoint, tmp_path, run_cli):
    out = tmp_path / "stream"
    assert run_cli("probe", f"checkpoint={tiny_checkpoint}", "probe.cache=false", "probe.epochs=1",
                   "probe.layers=[conv1,conv4]", *probe_overrides(tiny_data, out)) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["feature_cache"] == {"enabled": False, "hits": 0, "misses": 0}
    assert set(res["chosen_lr"]) == {"conv1", "conv4"} and not (tmp_path / "cache" / "features").exists()


# ------------------------------------------------------------------------------ protocol recipes


def test_goyal_avgpool_in_deploy_geometry_gives_the_published_dims():
    """CaffeNet geometry at 227 (maps 55/27/13) with Goyal et al.'s kernels: (55-19)/4+1 = 10,
    (27-12)/3+1 = 6, 13-9+1 = 5, 13-8+1 = 6 -> the ~9k dims of docs/protocols.md §3.1."""
    trunk = alexnet(geometry="deploy")
    assert extractor(trunk, CONV_LAYERS, "avgpool").dims(227) == {
        "conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}


def test_paper_schedule_steps_at_40k_80k_120k_of_140k():
    from ssl_bench.runs.probe import schedule
    paper = {"lr_steps": [40000, 80000, 120000], "lr_gamma": 0.1, "schedule_iterations": 140000,
             "max_steps": 140000}
    factory, length = schedule(paper, batches_per_epoch=5000)
    assert length == {"max_steps": 140000, "max_epochs": -1, "check_val_every_n_epoch": None,
                      "val_check_interval": 140000}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    multiplier = factory(opt).lr_lambdas[0]
    got = [multiplier(i) for i in (0, 39999, 40000, 79999, 80000, 119999, 120000, 139999)]
    assert got == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    # fast: 30 epochs of 10 batches = 300 steps, the boundaries scaled by 300/140000
    fast = {**paper, "max_steps": None, "epochs": 30}
    factory, length = schedule(fast, batches_per_epoch=10)
    assert length == {"max_epochs": 30, "check_val_every_n_epoch": 30}
    multiplier = factory(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)).lr_lambdas[0]
    assert multiplier(85) == 1 and multiplier(86) == pytest.approx(0.1)  # 40000 * 300 / 140000 = 85.7


def test_bias_gets_twice_the_lr_and_no_decay():
    """The authors' prototxt: classifier weights lr_mult 1 decay_mult 1, biases lr_mult 2 decay_mult 0."""
    probe = LinearProbe(ProbeHeads({"conv1": 8}, 3, lrs=[0.01]), lambda g: torch.optim.SGD(
        g, lr=0.5, momentum=0.9, weight_decay=5e-4), 3, bias_lr_mult=2.0, bias_weight_decay=0.0)
    groups = {g["name"]: g for g in probe.configure_optimizers().param_groups}
    assert set(groups) == {"conv1@0.01", "conv1@0.01/bias"}
    assert groups["conv1@0.01"]["lr"] == 0.01 and groups["conv1@0.01"]["weight_decay"] == 5e-4
    assert groups["conv1@0.01/bias"]["lr"] == 0.02 and groups["conv1@0.01/bias"]["weight_decay"] == 0.0
    assert [p.shape for p in groups["conv1@0.01/bias"]["params"]] == [torch.Size([3])]
    plain = LinearProbe(ProbeHeads({"conv1": 8}, 3), lambda g: torch.optim.SGD(g, lr=0.5), 3,
                        bias_lr_mult=2.0, bias_weight_decay=0.0)
    lrs = {g["name"]: g["lr"] for g in plain.configure_optimizers().param_groups}
    assert lrs == {"conv1": 0.5, "conv1/bias": 1.0}  # no per-head lr: the optimiser's, times 2


def test_global_batch_splits_over_devices_or_names_the_key():
    from omegaconf import OmegaConf

    from ssl_bench.errors import ConfigError
    from ssl_bench.runs.common import per_device_batch, world_size
    assert world_size(OmegaConf.create({"devices": 4, "num_nodes": 2})) == 8
    assert world_size(OmegaConf.create({"devices": [0, 2], "num_nodes": 1})) == 2
    assert world_size(OmegaConf.create({"devices": "0,1,3", "num_nodes": 1})) == 3
    assert world_size({"devices": "auto", "accelerator": "cpu"}) == 1
    assert per_device_batch(256, 8, "probe.batch_size") == 32
    with pytest.raises(ConfigError, match=r"probe.batch_size=256 .* 3 processes"):
        per_device_batch(256, 3, "probe.batch_size")


@pytest.mark.slow
def test_paper_protocol_run_records_recipe_and_deviations(tiny_data, tiny_checkpoint, tmp_path, run_cli, capsys):
    """protocol=paper: deploy geometry, 227 crops streamed (no cache), one lr on all of train, the
    schedule in iterations; the two values shortened for the test are the record's only deviations."""
    out = tmp_path / "paper"
    assert run_cli("probe", f"checkpoint={tiny_checkpoint}", "protocol=paper", "recipe.max_steps=3",
                   *probe_overrides(tiny_data, out)) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["name"] == "paper"
    assert res["protocol"]["deviations"] == ["batch_size=32", "max_steps=3"]  # paper: 256, 140000
    assert res["protocol"]["recipe"]["geometry"] == "deploy" and res["trunk"]["geometry"] == "deploy"
    assert res["protocol"]["recipe"]["crop_size"] == 227 and res["protocol"]["recipe"]["cache"] is False
    # tiny trunk (16-32-48-48-32 wide), bilinear sides 10/6/5/5/6
    assert res["feature_dims"] == {"conv1": 1600, "conv2": 1152, "conv3": 1200, "conv4": 1200, "conv5": 1152}
    assert res["chosen_lr"] == {l: 0.01 for l in CONV_LAYERS} and "holdout_top1" not in str(res["metrics"])
    assert res["feature_cache"] == {"enabled": False, "hits": 0, "misses": 0}
    assert not (tmp_path / "cache" / "features").exists()
    # k-NN has no published protocol: refused before any work
    assert run_cli("probe", f"checkpoint={tiny_checkpoint}", "protocol=paper", "probe=knn",
                   *probe_overrides(tiny_data, tmp_path / "knn")) == 2
    assert "no published knn protocol" in capsys.readouterr().err


def test_probe_batch_norm_matches_torch_and_is_shared_by_one_layers_heads():
    """Every head of a layer (one per learning rate) normalises like torch's BatchNorm1d (affine=False)
    in training and in eval mode, and keeps the same running statistics, though the batch statistics
    are computed once per layer."""
    torch.manual_seed(0)
    heads = ProbeHeads({"conv3": 40, "conv5": 24}, 5, lrs=[0.1, 0.01]).train()
    refs = {k: torch.nn.BatchNorm1d(d, affine=False) for k, d in (("conv3", 40), ("conv5", 24))}
    for _ in range(3):
        feats = {"conv3": torch.randn(32, 40) * 0.5 + 300.0, "conv5": torch.rand(32, 24) * 4}
        logits = heads(feats)
        normed = {k: ref(feats[k]) for k, ref in refs.items()}  # once per batch, as torch would
        for name, layer in heads.layer_of.items():
            linear = heads.heads[heads.index[name]][1]
            torch.testing.assert_close(logits[name], linear(normed[layer]), rtol=1e-4, atol=1e-4)
    for name, layer in heads.layer_of.items():
        bn = heads.heads[heads.index[name]][0]
        torch.testing.assert_close(bn.running_mean, refs[layer].running_mean)
        torch.testing.assert_close(bn.running_var, refs[layer].running_var, rtol=1e-4, atol=1e-5)
        assert int(bn.num_batches_tracked) == 3
    heads.eval()
    x = {"conv3": torch.randn(4, 40) + 300.0, "conv5": torch.rand(4, 24)}
    for name, layer in heads.layer_of.items():
        linear = heads.heads[heads.index[name]][1]
        torch.testing.assert_close(heads(x)[name], linear(refs[layer].eval()(x[layer])), rtol=1e-4, atol=1e-4)


def test_global_batch_statistics_match_float64_numpy_on_features_with_a_large_mean():
    """The DDP path's statistics (here for one rank): count, mean and biased variance equal numpy's
    float64 ones, also where the mean is 1e4 times the spread (E[x^2] - E[x]^2 in float32 is 10x off there)."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(64, 3, generator=g) * 0.01 + 100.0, torch.rand(64, 2, generator=g)], 1)
    n, mean, var = GlobalBatchNorm1d._batch_stats(x)
    ref = x.numpy().astype(np.float64)
    assert n.item() == 64 and mean.dtype == torch.float64
    np.testing.assert_allclose(mean.numpy(), ref.mean(0), rtol=1e-7)
    np.testing.assert_allclose(var.numpy(), ref.var(0), rtol=1e-4)
