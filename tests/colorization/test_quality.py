"""Colorization quality: AuC by hand, rebalancing, decoding extremes, the one-pass evaluation run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import CONF, TINY_TRUNK, save_suite_checkpoint
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ssl_bench import color
from ssl_bench.colorization.colorize import load_colorizer, predict_ab
from ssl_bench.colorization.quality import (
    THRESHOLDS,
    AucAccumulator,
    RandomReference,
    auc,
    auc_curve,
    classifier_top1,
    inverse_prior,
    load_classifier,
    rebalanced_pixel_weights,
)
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.models.checkpoint import CheckpointMismatchError
from ssl_bench.pretext.colorization import ColorizationPretext, ColorObjective
from ssl_bench.pretext.supervised import SupervisedPretext
from ssl_bench.runs.colorization_eval import run as run_colorization_eval

# ------------------------------------------------------------------------------- AuC by hand


def test_thresholds_and_extremes():
    assert THRESHOLDS == tuple(range(151))
    assert auc(torch.zeros(4, 5, 6)) == 100.0
    assert auc(torch.full((3, 7), 200.0)) == 0.0
    assert auc(torch.full((10,), float("nan"))) == 0.0
    curve = auc_curve(torch.zeros(3))
    assert curve.shape == (151,) and bool((curve == 1).all())


def test_uniform_error_75():
    # fraction within t: 0 for t < 75, 1 for t >= 75. Trapezoids: [74, 75] gives 1/2, [75, 150]
    # gives 75, so the area is 75.5 of 150: 50.333...%
    assert auc(torch.full((8, 8), 75.0)) == pytest.approx(100 * 75.5 / 150, abs=1e-12)
    # a non-integer error: 0 at t = 0, 1 from t = 1 on -> 149.5 / 150
    assert auc(torch.full((5,), 0.5)) == pytest.approx(100 * 149.5 / 150, abs=1e-12)


def test_weighted_two_point_distribution():
    # errors 10 (weight 3) and 100 (weight 1): the curve is 0 below 10, 0.75 on [10, 100), 1 from 100.
    # Area: [9,10] 0.375 + [10,99] 89 * 0.75 + [99,100] 0.875 + [100,150] 50 = 118.0 of 150.
    errors = torch.tensor([10.0, 100.0])
    weights = torch.tensor([3.0, 1.0])
    assert auc(errors, weights) == pytest.approx(100 * 118.0 / 150, abs=1e-12)
    # the same as repeating the pixel three times
    assert auc(torch.tensor([10.0, 10.0, 10.0, 100.0])) == pytest.approx(auc(errors, weights), abs=1e-12)
    acc = AucAccumulator()
    acc.update(errors[:1], weights[:1])
    acc.update(errors[1:], weights[1:])
    assert acc.value() == pytest.approx(100 * 118.0 / 150, abs=1e-12)


def test_accumulator_equals_exact_computation():
    g = torch.Generator().manual_seed(0)
    errors = torch.rand(50_000, generator=g) * 180  # some beyond 150
    errors[:100] = torch.arange(100).float()  # exactly on thresholds
    weights = torch.rand(50_000, generator=g)
    for w in (None, weights):
        acc = AucAccumulator()
        for chunk in range(0, errors.numel(), 7_000):
            acc.update(errors[chunk:chunk + 7_000].view(-1, 10),
                       None if w is None else w[chunk:chunk + 7_000].view(-1, 10))
        assert acc.count == errors.numel()
        assert torch.allclose(acc.curve(), auc_curve(errors, w), atol=1e-12)
        assert abs(acc.value() - auc(errors, w)) < 0.05


# ------------------------------------------------------------------------------- rebalancing


def bin_of(a: float, b: float) -> int:
    return int(color.nearest_bin(torch.tensor([float(a), float(b)]).view(1, 2, 1, 1)))


def test_rebalanced_auc_punishes_errors_on_rare_colours():
    # prior: grey (0, 0) common 0.8, green-ish (50, 50) rare 0.2, (-40, 40) never seen (0)
    common, rare, unseen = bin_of(0, 0), bin_of(50, 50), bin_of(-40, 40)
    prior = torch.zeros(color.NUM_BINS)
    prior[common], prior[rare] = 0.8, 0.2
    gt = torch.tensor([[0, 0]] * 4 + [[50, 50], [-40, 40]], dtype=torch.float32).t().reshape(1, 2, 1, 6)
    pred = gt.clone()
    pred[0, 0, 0, 4:] += 200.0  # the rare and the unseen pixel are wrong by 200, the common ones right
    err = (pred - gt).norm(dim=1)
    w = rebalanced_pixel_weights(gt, prior)
    assert w.shape == (1, 1, 6)
    assert torch.allclose(w[0, 0], torch.tensor([1.25] * 4 + [5.0, 0.0], dtype=torch.float64))
    # raw: 4 of 6 pixels exact everywhere; rebalanced: weight 4 * 1.25 = 5 right, 5 wrong (unseen: 0)
    assert auc(err) == pytest.approx(100 * 4 / 6, abs=1e-12)
    assert auc(err, w) == pytest.approx(50.0, abs=1e-12)
    assert auc(err, w) < auc(err)
    assert inverse_prior(prior)[unseen] == 0


def test_random_reference_never_copies_the_image_itself():
    ref = RandomReference(seed=0)
    assert ref(torch.zeros(1, 2, 4, 4)) is None  # one image, nothing else yet
    for i in range(5):  # every image of every batch has its own value
        ab = torch.arange(6).float().view(6, 1, 1, 1).expand(6, 2, 3, 3) + 10 * i + 1
        donors = ref(ab)
        assert donors.shape == ab.shape
        assert not bool((donors[:, 0, 0, 0] == ab[:, 0, 0, 0]).any())


# ------------------------------------------------------------------------------- decoding


def test_annealed_mean_between_mean_and_mode():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, color.NUM_BINS, 3, 3, generator=g)
    top = torch.randint(0, color.NUM_BINS, (2, 1, 3, 3), generator=g)
    logits.scatter_add_(1, top, torch.full((2, 1, 3, 3), 8.0))  # a clear mode per pixel
    mean, mode = color.decode(logits, "mean"), color.decode(logits, "mode")
    assert torch.allclose(color.decode(logits, "annealed_mean", 1.0), mean, atol=1e-5)
    assert torch.allclose(color.decode(logits, "annealed_mean", 0.01), mode, atol=1e-3)
    dist = [(color.decode(logits, "annealed_mean", t) - mode).norm(dim=1).mean() for t in (1.0, 0.38, 0.1)]
    assert dist[0] > dist[1] > dist[2]


# ------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    col = ColorizationPretext(alexnet_small(**TINY_TRUNK), ColorObjective(rebalance=False), None)
    with torch.no_grad():
        col.head.weight.mul_(20)
    sup = SupervisedPretext(alexnet_small(input_space="rgb", **TINY_TRUNK), None, 10)
    return save_suite_checkpoint(col, d / "color.ckpt"), save_suite_checkpoint(sup, d / "sup.ckpt")


def eval_cfg(tmp: Path, data: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("colorization_eval", overrides=[
            f"data.root={data}", "data.synthetic=null", "data.num_workers=0", "data.batch_size=16",
            f"paths.data_dir={tmp}", f"paths.cache_dir={tmp}/cache", f"paths.log_dir={tmp}",
            f"paths.output_dir={tmp}/out", "batch_size=8", "device=cpu", *overrides])


def test_run_colorization_eval_end_to_end(tiny_data, checkpoints, tmp_path):
    col, sup = checkpoints
    cfg = eval_cfg(tmp_path, tiny_data, [f"checkpoint={col}", f"classifier={sup}"])
    record = run_colorization_eval(cfg)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["kind"] == record["kind"] == "colorization_eval"
    assert on_disk["method"] == "colorization/class" and on_disk["status"] == "completed"
    m = on_disk["metrics"]
    for key in ("color/auc_raw", "color/auc_rebal", "color/classifier_top1", "color/classifier_top1_grey",
                "color/classifier_top1_gt", "color/images_per_s"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    for kind in ("raw", "rebal"):
        assert m[f"color/reference/gt/auc_{kind}"] == pytest.approx(100.0)
        assert 0 < m[f"color/reference/grey/auc_{kind}"] < 100
        assert 0 < m[f"color/reference/random/auc_{kind}"] < 100
        assert 0 < m[f"color/auc_{kind}"] < 100
    assert on_disk["dataset"]["num_eval"] == 20 and on_disk["seed"] == 0
    assert (tmp_path / "cache").glob("prior-*.pt")
    assert "0..150" in on_disk["setup"] and "annealed mean T=0.38" in on_disk["setup"]
    # the synthetic set and a suite classifier are not Table 1's ImageNet val and VGG-16: labelled, never comparable
    assert on_disk["protocol"]["name"] == "fast" and on_disk["protocol"]["deviations"][0].startswith("data=")

    # the one-pass numbers are those of a direct computation on the same crops
    model = load_colorizer(col)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    errs, images, labels = [], [], []
    for batch in dm.loader(dm.val_samples, False, 20):
        lab = color.rgb_to_lab(batch["image"])
        ab_hat = torch.nn.functional.interpolate(predict_ab(model, lab[:, :1]), size=lab.shape[-2:],
                                                 mode="bilinear", align_corners=False)
        errs.append((ab_hat - lab[:, 1:]).norm(dim=1))
        images.append(batch["image"])
        labels.append(batch["label"])
    assert m["color/auc_raw"] == pytest.approx(auc(torch.cat(errs)), abs=1e-4)
    classifier, desc = load_classifier(str(sup))
    assert desc["kind"] == "supervised" and desc["num_classes"] == 10
    assert m["color/classifier_top1_gt"] == pytest.approx(classifier_top1(classifier, torch.cat(images),
                                                                          torch.cat(labels)))


def test_eval_without_classifier_and_bad_classifiers(tiny_data, checkpoints, tmp_path):
    col, sup = checkpoints
    record = run_colorization_eval(eval_cfg(tmp_path, tiny_data, [f"checkpoint={col}", "max_images=5",
                                                                  "decode=mode"]))
    assert "color/classifier_top1" not in record["metrics"] and record["dataset"]["num_eval"] == 5
    assert record["classifier"] is None and "no classifier" in record["setup"]
    assert "classifier=None" in record["protocol"]["deviations"]
    with pytest.raises(CheckpointMismatchError, match="is not a classifier"):
        load_classifier(str(col))
    with pytest.raises(FileNotFoundError, match="VGG-16 weights"):
        load_classifier(f"vgg16:{tmp_path}/nothing.pth")
    with pytest.raises(CheckpointMismatchError, match="not a colorization model"):
        run_colorization_eval(eval_cfg(tmp_path, tiny_data, [f"checkpoint={sup}"]))
