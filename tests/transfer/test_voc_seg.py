"""VOC segmentation fine-tuning (FCN-32s): masks, SBD, joint transforms, upsampling, mIoU, a tiny fit."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ssl_bench.data.voc import read_image_set, voc_colormap
from ssl_bench.data.voc_synthetic import write_synthetic_voc
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.transfer.voc_seg import (
    IGNORE_INDEX,
    MEAN_PIXEL,
    SEG_CLASSES,
    FCN32s,
    SegTrainTransform,
    VOCSegmentationData,
    VOCSegmentationDataset,
    VOCSegmentationTask,
    bilinear_kernel,
    collate_seg,
    read_mask,
)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return write_synthetic_voc(tmp_path_factory.mktemp("voc"), num_trainval=16, num_test=8, image_size=64,
                               year="2012")


def _tiny_trunk() -> nn.Module:
    return alexnet_small(input_space="rgb", widths=(16, 32, 48, 48, 32), fc_channels=64)


def _save_palette(a: np.ndarray, path: Path) -> None:
    im = Image.fromarray(a.astype(np.uint8), mode="P")
    im.putpalette(voc_colormap().tobytes())
    im.save(path)


# ------------------------------------------------------------------------------------ masks

def test_read_mask_palette_indices_and_bad_values(tmp_path):
    a = np.zeros((5, 7), dtype=np.uint8)
    a[1:3, 2:5] = 15
    a[0, :] = 255
    a[4, 6] = 20
    _save_palette(a, tmp_path / "ok.png")
    with Image.open(tmp_path / "ok.png") as im:
        assert im.mode == "P"
    got = read_mask(tmp_path / "ok.png")
    assert got.dtype == np.uint8 and np.array_equal(got, a)
    Image.fromarray(a, mode="L").save(tmp_path / "grey.png")
    assert np.array_equal(read_mask(tmp_path / "grey.png"), a)
    a[2, 2] = 30
    _save_palette(a, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"bad\.png.*\[30\]"):
        read_mask(tmp_path / "bad.png")


def test_read_mask_rgb_in_voc_colours_or_error(tmp_path):
    """An RGB mask maps back to indices exactly when every colour is a class or void colour
    (colours hand-copied from the devkit's VOClabelcolormap); any other colour is an error."""
    colours = {0: (0, 0, 0), 1: (128, 0, 0), 15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    a = np.array([[0, 1, 15, 20], [255, 255, 1, 0], [15, 15, 20, 20]], dtype=np.uint8)
    rgb = np.zeros((*a.shape, 3), dtype=np.uint8)
    for k, c in colours.items():
        rgb[a == k] = c
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    got = read_mask(tmp_path / "rgb.png")
    assert got.dtype == np.uint8 and np.array_equal(got, a)
    rgb[1, 2] = (127, 0, 0)  # one pixel a shade off aeroplane: no exact class colour
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "off.png")
    with pytest.raises(ValueError, match=r"off\.png: RGB segmentation mask holds 1 colour.*\(127, 0, 0\)"):
        read_mask(tmp_path / "off.png")
    Image.fromarray(np.dstack([rgb, np.full(a.shape, 255, np.uint8)]), mode="RGBA").save(tmp_path / "rgba.png")
    with pytest.raises(ValueError, match=r"rgba\.png: segmentation mask has PIL mode 'RGBA'"):
        read_mask(tmp_path / "rgba.png")


def test_dataset_reads_synthetic_masks(voc):
    ds = VOCSegmentationDataset(voc.parent.parent, "2012", "val")
    assert ds.ids == read_image_set(voc, "2012", "val", task="Segmentation")
    image, mask = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert mask.dtype == torch.uint8 and mask.shape == (64, 64)
    assert np.array_equal(mask.numpy(), read_mask(voc / "SegmentationClass" / f"{ds.ids[0]}.png"))
    assert set(np.unique(mask.numpy())) - set(range(21)) == {255}
    with pytest.raises(FileNotFoundError, match=r"Segmentation[/\\]nosuch\.txt"):
        VOCSegmentationDataset(voc, "2012", "nosuch")


# ------------------------------------------------------------------------------------ SBD

def test_sbd_adds_ids_outside_voc_val(voc, tmp_path):
    import scipy.io

    val = read_image_set(voc, "2012", "val", task="Segmentation")
    train = read_image_set(voc, "2012", "train", task="Segmentation")
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "img").mkdir(parents=True)
    (sbd / "cls").mkdir()
    new = ["2008_000002", "2008_000003", "2008_000007"]
    rng = np.random.default_rng(0)
    segs = {}
    for i in new + [val[0], train[0]]:
        h, w = 40, 52
        seg = rng.integers(0, 21, size=(h, w)).astype(np.uint8)
        segs[i] = seg
        scipy.io.savemat(sbd / "cls" / f"{i}.mat", {"GTcls": {
            "Segmentation": seg, "CategoriesPresent": np.unique(seg[seg > 0]).astype(np.uint8)}})
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(sbd / "img" / f"{i}.jpg")
    (sbd / "train.txt").write_text(f"{new[0]}\n{val[0]}\n{new[1]}\n")
    (sbd / "val.txt").write_text(f"{new[2]}\n{train[0]}\n{new[0]}\n")

    only = VOCSegmentationDataset(voc, "2012", "sbd_train", sbd_root=tmp_path / "benchmark_RELEASE")
    assert only.ids == [new[0], val[0], new[1]] and only.num_sbd == 3  # exactly SBD's train.txt
    assert np.array_equal(only[1][1].numpy(), segs[val[0]])
    with pytest.raises(ValueError, match="sbd_root"):
        VOCSegmentationDataset(voc, "2012", "sbd_train")
    ds = VOCSegmentationDataset(voc, "2012", "train", sbd_root=tmp_path / "benchmark_RELEASE")
    assert ds.ids == train + new           # VOC val excluded, duplicates once, VOC train kept from VOC
    assert ds.num_sbd == 3
    for k, i in enumerate(new):
        image, mask = ds[len(train) + k]
        assert image.shape == (3, 40, 52)
        assert np.array_equal(mask.numpy(), segs[i])
    # the VOC copy of a shared id wins
    assert np.array_equal(ds[0][1].numpy(), read_mask(voc / "SegmentationClass" / f"{train[0]}.png"))
    with pytest.raises(ValueError, match="train"):
        VOCSegmentationDataset(voc, "2012", "val", sbd_root=sbd)
    scipy.io.savemat(sbd / "cls" / f"{new[2]}.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=rf"{new[2]}\.mat.*GTcls"):
        ds[len(train) + 2]
    (sbd / "img" / f"{new[1]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=rf"img[/\\]{new[1]}\.jpg"):
        VOCSegmentationDataset(voc, "2012", "train", sbd_root=sbd)


# ------------------------------------------------------------------------------------ transforms

def _coded(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose pixels encode (mask value, row, column)."""
    rng = np.random.default_rng(1)
    mask = torch.from_numpy(rng.choice([*range(21), 255], size=(n, n + 6)).astype(np.uint8))
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n + 6), indexing="ij")
    image = torch.stack([mask, rows.to(torch.uint8), cols.to(torch.uint8)])
    return image, mask


def test_joint_transform_crops_flips_and_pads_together():
    image, mask = _coded()
    g = torch.Generator().manual_seed(0)
    t = SegTrainTransform(crop_size=32, scale_range=(1.0, 1.0))
    flips = set()
    for _ in range(20):
        img, m = t(image, mask, generator=g)
        assert img.shape == (3, 32, 32) and m.shape == (32, 32)
        assert torch.equal(img[0], m)                         # same pixels in image and mask
        r0, c = int(img[1, 0, 0]), img[2, 0]
        assert torch.equal(img[1], (r0 + torch.arange(32)).view(32, 1).expand(32, 32).to(torch.uint8))
        step = int(c[1]) - int(c[0])
        flips.add(step)
        assert torch.equal(c, (int(c[0]) + step * torch.arange(32)).to(torch.uint8))
        assert torch.equal(m, mask[r0:r0 + 32, int(c.min()):int(c.min()) + 32].flip(-1) if step < 0
                           else mask[r0:r0 + 32, int(c[0]):int(c[0]) + 32])
    assert flips == {1, -1}
    # padding: image gets the mean pixel, the mask 255
    big = SegTrainTransform(crop_size=50, scale_range=(1.0, 1.0))
    img, m = big(image, mask, generator=g)
    assert img.shape == (3, 50, 50)
    pad = (img[1] == MEAN_PIXEL[1]) & (img[2] == MEAN_PIXEL[2])       # rows/cols < 104: never real
    assert int(pad.sum()) == 50 * 50 - 40 * 46 and pad[40:].all()
    assert (m[pad] == IGNORE_INDEX).all() and (img[0][pad] == MEAN_PIXEL[0]).all()
    assert torch.equal(img[0][~pad], m[~pad])
    # scaling: fixed output size, mask values stay labels (nearest)
    s = SegTrainTransform(crop_size=24, scale_range=(0.5, 1.5))
    for _ in range(5):
        img, m = s(image, mask, generator=g)
        assert img.shape == (3, 24, 24) and set(m.unique().tolist()) <= set(range(21)) | {255}


def test_collate_pads_masks_with_ignore():
    a = (torch.full((3, 10, 12), 7, dtype=torch.uint8), torch.ones(10, 12, dtype=torch.uint8))
    b = (torch.full((3, 14, 9), 9, dtype=torch.uint8), torch.full((14, 9), 2, dtype=torch.uint8))
    out = collate_seg([a, (None, "x.jpg"), b])
    assert out["image"].shape == (2, 3, 14, 12) and out["mask"].shape == (2, 14, 12)
    assert out["skipped"] == ["x.jpg"]
    assert (out["mask"] != IGNORE_INDEX).sum() == 10 * 12 + 14 * 9
    assert (out["mask"][0, 10:] == IGNORE_INDEX).all() and (out["image"][0, :, 10:, 0] ==
                                                            torch.tensor(MEAN_PIXEL).view(3, 1)).all()


# ------------------------------------------------------------------------------------ upsampling

def test_bilinear_kernel_known_values():
    w = bilinear_kernel(3, 4)
    assert w.shape == (3, 3, 4, 4)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    for i in range(3):
        for j in range(3):
            assert torch.allclose(w[i, j], torch.outer(taps, taps) if i == j else torch.zeros(4, 4))
    # 1-D taps for k = 3 and k = 32 (FCN's upsample_filt)
    assert torch.allclose(bilinear_kernel(1, 3)[0, 0, 1], torch.tensor([0.5, 1.0, 0.5]))
    t32 = bilinear_kernel(1, 32)[0, 0, 15] / (31 / 32)       # row 15 = taps[15] * taps
    assert torch.allclose(t32, 1 - (torch.arange(32) - 15.5).abs() / 16)
    # a 2 x 2 input through ConvTranspose2d(k=4, s=2, pad=0): rows R = [[.25,.75,.75,.25,0,0],
    # [0,0,.25,.75,.75,.25]], output = R^T X R, written out by hand
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    full = F.conv_transpose2d(x, bilinear_kernel(1, 4), stride=2)
    expected = torch.tensor([
        [0.0625, 0.1875, 0.3125, 0.4375, 0.3750, 0.1250],
        [0.1875, 0.5625, 0.9375, 1.3125, 1.1250, 0.3750],
        [0.3750, 1.1250, 1.7500, 2.2500, 1.8750, 0.6250],
        [0.6250, 1.8750, 2.7500, 3.2500, 2.6250, 0.8750],
        [0.5625, 1.6875, 2.4375, 2.8125, 2.2500, 0.7500],
        [0.1875, 0.5625, 0.8125, 0.9375, 0.7500, 0.2500]])
    assert torch.allclose(full[0, 0], expected)
    # cropped by s/2 = 1 it is F.interpolate(align_corners=False) away from the border
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(full[0, 0, 1:5, 1:5][1:3, 1:3], ref[0, 0, 1:3, 1:3])
    x = torch.randn(1, 2, 6, 7, generator=torch.Generator().manual_seed(0))
    full = F.conv_transpose2d(x, bilinear_kernel(2, 4), stride=2)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(full[..., 1:-1, 1:-1][..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-6)


class _StubTrunk(nn.Module):
    input_space, out_channels = "rgb", 4

    def forward_features(self, x, layers):
        n, _, h, w = x.shape
        return {"fc7": torch.ones(n, 4, -(-h // 16), -(-w // 16))}


def test_fcn_upsampling_constant_alignment_and_learned_path():
    model = FCN32s(_StubTrunk())
    assert not model.upscore.weight.requires_grad
    for h, w in ((16, 16), (17, 50), (64, 64), (1, 31)):
        score = torch.full((2, 21, -(-h // 16), -(-w // 16)), 2.5)
        assert torch.allclose(model.upsample(score, (h, w)), torch.full((2, 21, h, w), 2.5))
    # fc7 cell i is centred on pixel 16 i: the up-sampled peak sits at 16 i + 0.5 (pixels 16 i, 16 i + 1)
    d = torch.zeros(1, 21, 5, 6)
    d[0, 3, 2, 4] = 1.0
    up = model.upsample(d, (80, 96))[0, 3]
    peak = (up == up.max()).nonzero().tolist()
    assert peak == [[32, 64], [32, 65], [33, 64], [33, 65]]
    # stride 16 = F.interpolate shifted by 7 px in the interior; stride 2 = F.interpolate exactly
    x = torch.randn(1, 21, 5, 6, generator=torch.Generator().manual_seed(1))
    ref = F.interpolate(x, scale_factor=16, mode="bilinear", align_corners=False)
    assert torch.allclose(model.upsample(x, (80, 96))[..., 8:70, 8:80], ref[..., 15:77, 15:87], atol=1e-5)
    two = FCN32s(_StubTrunk(), stride=2)
    assert torch.allclose(two.upsample(x, (10, 12)),
                          F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), atol=1e-6)
    learned = FCN32s(_StubTrunk(), learn_upsampling=True)
    assert learned.upscore.weight.requires_grad
    assert torch.allclose(learned.upsample(x, (80, 96)), model.upsample(x, (80, 96)), atol=1e-5)
    out = model(torch.zeros(2, 3, 37, 45))
    assert out.shape == (2, 21, 37, 45) and torch.count_nonzero(out) == 0      # zero-initialised score


# ------------------------------------------------------------------------------------ metric + fit

class _Oracle(VOCSegmentationTask):
    """Predicts the ground truth (looked up by the image's bytes); void pixels -> class 0."""

    def __init__(self, truth: dict[bytes, torch.Tensor], **kw):
        super().__init__(_StubTrunk(), partial(torch.optim.SGD, lr=0.1), **kw)
        self.truth = truth

    def segment(self, images):
        out = torch.stack([self.truth[im.numpy().tobytes()] for im in images]).long()
        return out.masked_fill(out == IGNORE_INDEX, 0)


def _trainer(tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_perfect_predictor_gives_miou_100_and_ignores_void(voc, tmp_path):
    ds = VOCSegmentationDataset(voc, "2012", "val")
    truth = {img.numpy().tobytes(): m for img, m in (ds[i] for i in range(len(ds)))}
    data = VOCSegmentationData(voc, "2012", num_workers=0, test_batch_size=3)
    task = _Oracle(truth)
    _trainer(tmp_path).test(task, datamodule=data)
    r = task.results
    assert r["voc12/seg/mIoU"] == pytest.approx(100.0) and r["voc12/seg/pixel_acc"] == pytest.approx(100.0)
    present = np.unique(np.concatenate([m.numpy().ravel() for m in truth.values()]))
    for c, name in enumerate(SEG_CLASSES):
        iou = r[f"voc12/seg/IoU/{name}"]
        assert iou == pytest.approx(100.0) if c in present else np.isnan(iou)
    assert task.confusion.sum() == sum(int((m != IGNORE_INDEX).sum()) for m in truth.values())
    assert np.count_nonzero(task.confusion - np.diag(np.diag(task.confusion))) == 0


def test_short_fit_and_test_on_synthetic_voc(voc, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(voc.parent, root / "VOCdevkit")
    vroot = root / "VOCdevkit" / "VOC2012"
    bad = read_image_set(vroot, "2012", "train", task="Segmentation")[0]
    (vroot / "JPEGImages" / f"{bad}.jpg").write_bytes(b"not a jpeg")
    torch.manual_seed(0)
    data = VOCSegmentationData(root, "2012", crop_size=64, batch_size=4, num_workers=0)
    task = VOCSegmentationTask(_tiny_trunk(), partial(torch.optim.SGD, lr=0.01, momentum=0.9))
    trainer = _trainer(tmp_path, max_epochs=2, log_every_n_steps=1)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        trainer.fit(task, datamodule=data)
    loss = trainer.callback_metrics["voc12/seg/loss"]
    assert torch.isfinite(loss)
    assert task.skips.count == 2                                   # once per epoch
    moved = task.model.score.weight.abs().sum()
    assert moved > 0 and not task.model.upscore.weight.requires_grad
    assert torch.equal(task.model.upscore.weight, bilinear_kernel(21, 32))
    out = trainer.test(task, datamodule=data)
    r = task.results
    c = task.confusion.astype(float)  # rows target, columns prediction; IoU written out per class
    ious = [c[k, k] / (c[k].sum() + c[:, k].sum() - c[k, k]) for k in range(21) if c[k].sum() + c[:, k].sum()]
    assert r["voc12/seg/mIoU"] == pytest.approx(100 * np.mean(ious))
    assert r["voc12/seg/pixel_acc"] == pytest.approx(100 * np.trace(c) / c.sum())
    assert len([k for k in r if "/IoU/" in k]) == 21
    assert out[0]["voc12/seg/mIoU"] == pytest.approx(r["voc12/seg/mIoU"])
    ds = VOCSegmentationDataset(voc, "2012", "val")
    assert task.confusion.sum() == sum(int((ds[i][1] != IGNORE_INDEX).sum()) for i in range(len(ds)))


def _overfit_miou(voc: Path, tmp_path: Path, epochs: int) -> float:
    """mIoU on the VOC2012 'train' images after ``epochs`` on those same images (whole 64 px images)."""
    pl.seed_everything(0, verbose=False)
    data = VOCSegmentationData(voc, "2012", test_split="train", crop_size=64, scale_range=(1.0, 1.0),
                               batch_size=4, num_workers=0)
    task = VOCSegmentationTask(_tiny_trunk(), partial(torch.optim.Adam, lr=1e-2), dropout=0.0)
    trainer = _trainer(tmp_path, max_epochs=max(epochs, 1), limit_train_batches=1.0 if epochs else 0)
    if epochs:
        trainer.fit(task, datamodule=data)
    trainer.test(task, datamodule=data, verbose=False)
    return task.results["voc12/seg/mIoU"]


def test_fcn_learns_the_training_masks(voc, tmp_path):
    """Training must learn: the untrained FCN (zero score layer) predicts background everywhere (measured
    mIoU 6.8); 60 epochs on the training images raise their mIoU well above it (measured 17.4)."""
    untrained, trained = _overfit_miou(voc, tmp_path, 0), _overfit_miou(voc, tmp_path, 60)
    assert trained > untrained + 7, (untrained, trained)


# ------------------------------------------------------------------------------------ deploy FCN-32s (paper)

def _deploy_trunk(**kw) -> nn.Module:
    return alexnet_small(input_space="rgb", geometry="deploy", widths=(16, 32, 48, 48, 32), fc_channels=64,
                         batch_norm=False, **kw)


def _receptive_centre(layers, y: int, input_pad: int) -> float:
    """Brute force: the input interval fc7 cell y sees, walked back layer by layer; its midpoint."""
    lo, hi = y, y
    for k, s, p, d in reversed(layers):
        lo, hi = lo * s - p, hi * s - p + d * (k - 1)
    return (lo + hi) / 2 - input_pad


def test_deploy_fcn_has_fcn_alexnets_stride_and_crop_and_keeps_odd_sizes():
    from ssl_bench.models.alexnet import AlexNet
    from ssl_bench.transfer.voc_seg import DeployFCN32s, coordinate_map, trunk_layers
    caffenet = AlexNet(input_space="rgb", geometry="deploy", widths=(4, 4, 4, 4, 4), fc_channels=4, batch_norm=False)
    model = DeployFCN32s(caffenet)
    # FCN's voc-fcn-alexnet: upscore kernel 63 stride 32, crop_param offset 18 (its val.prototxt)
    assert (model.stride, model.crop_offset, model.upscore.kernel_size) == (32, 18, (63, 63))
    assert not model.upscore.weight.requires_grad and model.upscore.bias is None
    for trunk in (caffenet, _deploy_trunk()):
        layers = trunk_layers(trunk)
        stride, centre = coordinate_map(layers, 100)
        assert [_receptive_centre(layers, y, 100) for y in (0, 3)] == [centre, centre + 3 * stride]
    with torch.no_grad():
        for h, w in ((1, 1), (33, 47), (101, 63), (227, 229)):
            assert model(torch.randn(1, 3, h, w)).shape == (1, 21, h, w)
        small = DeployFCN32s(_deploy_trunk())
        for h, w in ((5, 7), (65, 63)):
            assert small(torch.randn(2, 3, h, w)).shape == (2, 21, h, w)


def test_deploy_upsampler_is_bilinear_between_the_cells_centres():
    """Score cell y sits on its receptive field's centre c_y; between centres the output is the
    separable linear interpolation of the cells (numpy's interp per axis as the reference)."""
    from ssl_bench.transfer.voc_seg import DeployFCN32s, coordinate_map, trunk_layers
    model = DeployFCN32s(_deploy_trunk())
    stride, centre = coordinate_map(trunk_layers(model.trunk), 100)
    g = torch.Generator().manual_seed(0)
    score = torch.randn(1, 21, 6, 5, generator=g)
    H, W = 150, 120
    out = model.upsample(score, (H, W))[0].numpy()
    ys, xs = centre + stride * np.arange(6), centre + stride * np.arange(5)
    rows = np.arange(int(np.ceil(max(ys[0], 0))), int(min(ys[-1], H - 1)) + 1)
    cols = np.arange(int(np.ceil(max(xs[0], 0))), int(min(xs[-1], W - 1)) + 1)
    assert len(rows) > 60 and len(cols) > 60
    s = score[0].numpy()
    for c in (0, 7, 20):
        along_x = np.stack([np.interp(cols, xs, s[c, i]) for i in range(6)])         # 6 x len(cols)
        ref = np.stack([np.interp(rows, ys, along_x[:, j]) for j in range(len(cols))], axis=1)
        assert np.allclose(out[c][np.ix_(rows, cols)], ref, atol=1e-5)


def _protocol_of(out: Path) -> dict:
    import json
    return json.loads((out / "results.json").read_text())


def test_paper_segmentation_run_is_the_deploy_fcn_without_geometry_deviations(tmp_path, run_cli):
    out = tmp_path / "paper"
    assert run_cli("finetune", "task=voc_seg", "protocol=paper", "init=gaussian", "backbone=alexnet_small",
                   "backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=64", "backbone.fc6_kernel=1",
                   "backbone.input_space=rgb", "voc_root=synthetic", "synthetic_voc.num_trainval=8",
                   "synthetic_voc.num_test=4", "synthetic_voc.image_size=64", f"paths.data_dir={tmp_path / 'data'}",
                   f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", "task.datamodule.num_workers=0",
                   "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", "finetune.rescale_images=4",
                   "finetune.rescale_size=64", "finetune.rescale=per_unit", "recipe.train_list=train",
                   "recipe.test_list=val", "recipe.max_steps=1", "recipe.accumulate_grad_batches=2") == 0
    record = _protocol_of(out)
    assert record["trunk"]["geometry"] == "deploy" and record["protocol"]["recipe"]["stride"] == 32
    assert sorted(record["protocol"]["deviations"]) == ["accumulate_grad_batches=2", "max_steps=1", "rescale=per_unit",
                                                        "test_list=val", "train_list=train"]
    assert 0.0 <= record["metrics"]["voc12/seg/mIoU"] <= 100.0


def test_deploy_fcn_overfits_two_training_images(voc):
    """Two whole training images, batch 1: the zero-initialised net predicts background only (mIoU of
    the images' classes about 17 on the synthetic tree); fitting them lifts it far above (measured 70 after
    150 passes; the cluttered synthetic ground keeps it from 100 this early)."""
    ds = VOCSegmentationDataset(voc, "2012", "train")
    picked = [ds[i] for i in range(len(ds)) if min(np.unique(ds[i][1].numpy(), return_counts=True)[1]) >= 100][:2]
    assert len(picked) == 2
    torch.manual_seed(0)
    task = VOCSegmentationTask(_deploy_trunk(), partial(torch.optim.Adam, lr=3e-3), geometry="deploy", stride=32,
                               dropout=0.0)

    def miou() -> float:
        task.on_test_epoch_start()
        for image, mask in picked:
            task.accumulate(task.segment(image[None]), mask[None].long())
        return task.compute_results(task.confusion)["voc12/seg/mIoU"]

    before = miou()
    opt = task.configure_optimizers()
    for _ in range(150):
        for image, mask in picked:
            loss = task.training_step({"image": image[None], "mask": mask[None], "skipped": []}, 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = miou()
    assert before < 40 and after > 60, (before, after)


def test_biases_get_caffes_lr_and_decay_multipliers():
    """The authors' net trains every bias at lr_mult 2, decay_mult 0; the weights keep the base values."""
    task = VOCSegmentationTask(_deploy_trunk(), partial(torch.optim.SGD, lr=1e-4, momentum=0.9, weight_decay=5e-4),
                               geometry="deploy", stride=32, bias_lr_mult=2.0, bias_decay_mult=0.0)
    weights, biases = task.configure_optimizers().param_groups
    assert (weights["lr"], weights["weight_decay"], biases["lr"], biases["weight_decay"]) == (1e-4, 5e-4, 2e-4, 0.0)
    trunk_biases = [p for n, p in task.model.trunk.named_parameters() if n.endswith(".bias")]
    assert len(trunk_biases) == 7                                       # conv1..conv5, fc6, fc7
    assert {id(p) for p in biases["params"]} == {id(task.model.score.bias), *map(id, trunk_biases)}
    assert id(task.model.score.weight) in {id(p) for p in weights["params"]}
    assert all(id(p) != id(task.model.upscore.weight) for g in (weights, biases) for p in g["params"])
    with pytest.raises(ValueError, match="task.module.stride=16"):
        VOCSegmentationTask(_deploy_trunk(), partial(torch.optim.SGD, lr=0.1), geometry="deploy", stride=16)
