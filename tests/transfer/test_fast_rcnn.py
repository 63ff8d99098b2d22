"""Fast R-CNN on given proposals: sampling, RoI pooling, box coding, a tiny overfit, the paper recipe."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import roi_pool

from ssl_bench.models.alexnet import AlexNet
from ssl_bench.transfer.fast_rcnn import SPATIAL_SCALE, FastRCNN, decode_boxes, encode_boxes, sample_rois

ROOT = Path(__file__).resolve().parents[2]


def iou_brute(a, b) -> float:
    """Inclusive-pixel IoU of two boxes, written out."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def test_sampling_fractions_and_thresholds_match_brute_force_iou() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.tensor([[20.0, 30.0, 120.0, 150.0], [200.0, 40.0, 260.0, 90.0]])
    gt_labels = torch.tensor([7, 15])
    xy = torch.rand(600, 2, generator=g) * 280
    wh = torch.rand(600, 2, generator=g) * 120 + 4
    near = gt.repeat(20, 1) + torch.randn(40, 4, generator=g) * 8  # many foreground candidates
    props = torch.round(torch.cat([torch.cat([xy, xy + wh], 1), near]))
    rois, labels, targets = sample_rois(props, gt, gt_labels, rois_per_image=64, fg_fraction=0.25, generator=g)
    cands = [b.tolist() for b in torch.cat([gt, props])]
    best = [max(range(2), key=lambda j: iou_brute(c, gt[j].tolist())) for c in cands]
    overlap = [iou_brute(c, gt[j].tolist()) for c, j in zip(cands, best)]
    n_fg_avail = sum(o >= 0.5 for o in overlap)
    n_bg_avail = sum(0.1 <= o < 0.5 for o in overlap)
    assert n_fg_avail > 16 and n_bg_avail > 48  # both pools larger than asked
    assert len(rois) == 64 and int((labels > 0).sum()) == 16 and (labels[:16] > 0).all()
    for roi, label, t in zip(rois.tolist(), labels.tolist(), targets):
        k = cands.index(roi)
        if label:
            assert overlap[k] >= 0.5 and label == int(gt_labels[best[k]])
        else:
            assert 0.1 <= overlap[k] < 0.5 and not t.any()
    # few candidates: all foreground taken, background fills up to what exists
    few = torch.tensor([[20.0, 30.0, 118.0, 148.0], [0.0, 0.0, 60.0, 90.0], [250.0, 250.0, 270.0, 270.0]])
    rois, labels, _ = sample_rois(few, gt[:1], gt_labels[:1], rois_per_image=64, generator=g)
    assert labels.tolist() == [7, 7, 0]  # gt, its near copy, one bg (IoU 0.16); IoU 0 is neither


def test_roi_pool_at_one_sixteenth_matches_a_hand_computed_case() -> None:
    fmap = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)  # value = 8 * y + x
    # x 16..63 -> cells round(1) .. round(3.94) = 1..4; y 0..31 -> cells 0..round(1.94) = 0..2
    out = roi_pool(fmap, torch.tensor([[0.0, 16.0, 0.0, 63.0, 31.0]]), (2, 2), SPATIAL_SCALE)
    # width 4 -> bins x {1,2},{3,4}; height 3 -> bins y floor/ceil of 1.5: {0,1},{1,2}
    assert out[0, 0].tolist() == [[8 * 1 + 2, 8 * 1 + 4], [8 * 2 + 2, 8 * 2 + 4]]
    trunk = AlexNet(widths=(8, 8, 8, 8, 8), fc_channels=16, fc6_kernel=6, input_space="rgb", geometry="deploy")
    net = FastRCNN(trunk, torch.nn.Linear(8 * 36, 16), torch.nn.Linear(16, 16)).eval()
    scores, deltas = net(torch.zeros(1, 3, 227, 227), torch.tensor([[0.0, 0, 0, 100, 100], [0.0, 5, 5, 50, 200]]))
    assert scores.shape == (2, 21) and deltas.shape == (2, 84)


def test_box_targets_round_trip_and_the_published_formula() -> None:
    rois = torch.tensor([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 9.0, 9.0]], dtype=torch.float64)
    gt = torch.tensor([[15.0, 18.0, 60.0, 90.0], [2.0, 1.0, 12.0, 7.0]], dtype=torch.float64)
    t = encode_boxes(rois, gt)
    for k in range(2):  # roidb._compute_targets, widths x2 - x1 + EPS
        (x1, y1, x2, y2), (g1, h1, g2, h2) = rois[k].tolist(), gt[k].tolist()
        pw, ph, gw, gh = x2 - x1, y2 - y1, g2 - g1, h2 - h1
        want = [((g1 + gw / 2) - (x1 + pw / 2)) / pw, ((h1 + gh / 2) - (y1 + ph / 2)) / ph,
                math.log(gw / pw), math.log(gh / ph)]
        assert t[k].tolist() == pytest.approx(want, rel=1e-9)
    deltas = torch.zeros(2, 8, dtype=torch.float64)
    deltas[:, 4:] = t
    boxes = decode_boxes(rois, deltas)
    assert torch.allclose(boxes[:, 4:], gt, atol=1e-9) and torch.allclose(boxes[:, :4], rois, atol=1e-9)


def test_paper_recipe_matches_the_documented_table() -> None:
    from ssl_bench.config import compose
    from ssl_bench.runs.finetune import protocol_entry
    text = (ROOT / "docs/transfer.md").read_text()
    section = text[text.index("## Detection (VOC2007)"):text.index("## Segmentation (VOC2012)")]
    rows = re.findall(r"^\| ([a-z_ /]+) \| ([^|]+) \| ([^|]+) \|", section, flags=re.M)
    cfg = compose("finetune", ["task=voc_det", "voc_root=x", "protocol=paper"])
    recipe = protocol_entry(cfg, {"rescale": "calibrate", "mode": "auto"})["recipe"]
    checked = 0
    for keys, paper, _ in rows:
        if keys == "key":
            continue
        for key, value in zip(keys.split(" / "), paper.strip().split(" / ")):
            assert str(recipe[key]).lower().replace(" ", "") == value.lower().replace(" ", ""), key
            checked += 1
    assert checked >= 24
    assert cfg.task.module.detector == "selective_search" and cfg.trainer.max_steps == 150000
    assert protocol_entry(cfg, {"rescale": "calibrate", "mode": "auto"})["deviations"] == []


def test_missing_proposals_is_one_line_naming_the_key(tmp_path: Path) -> None:
    from ssl_bench.config import compose
    from ssl_bench.errors import ConfigError
    from ssl_bench.runs.finetune import detection_proposals
    cfg = compose("finetune", ["task=voc_det", "voc_root=x", "protocol=paper"])
    with pytest.raises(ConfigError, match="task.proposals") as e:
        detection_proposals(cfg, tmp_path)
    assert "\n" not in str(e.value)
    fast = compose("finetune", ["task=voc_det", "voc_root=x", "protocol=fast"])
    assert detection_proposals(fast, tmp_path) == {}


def test_synthetic_proposals_file_reads_back_in_the_release_layout(tmp_path: Path) -> None:
    from scipy.io import loadmat

    from ssl_bench.transfer.proposals import read_proposals, synthetic_proposals, write_proposals
    boxes = synthetic_proposals({"000001": (np.array([[10.0, 20.0, 40.0, 60.0]]), 96, 96)}, seed=0)
    path = write_proposals(tmp_path / "voc_2007_trainval.mat", boxes)
    raw = loadmat(str(path))
    first = np.asarray(raw["boxes"].ravel()[0], dtype=np.float64)
    assert np.array_equal(first, boxes["000001"][:, (1, 0, 3, 2)] + 1)  # 1-based y1 x1 y2 x2
    assert np.array_equal(read_proposals(path)["000001"], boxes["000001"])
    b = boxes["000001"]
    assert len(b) == 100 and (b >= 0).all() and (b <= 95).all() and (b[:, 2:] >= b[:, :2]).all()


def test_tiny_fast_rcnn_overfits_two_synthetic_images(tmp_path: Path) -> None:
    """60 Fast R-CNN steps on 2 synthetic images (their stand-in proposals) detect them again:
    high AP on the training images, far above the same net before training."""
    import pytorch_lightning as pl

    from ssl_bench.data.voc_synthetic import write_synthetic_voc
    from ssl_bench.models.prepare import fc_layers
    from ssl_bench.transfer.fast_rcnn import FastRCNNTask
    from ssl_bench.transfer.fast_rcnn_data import FastRCNNData, write_synthetic_proposals

    voc = write_synthetic_voc(tmp_path / "voc", num_trainval=2, num_test=1, image_size=96)
    props = write_synthetic_proposals(voc, "2007", ("trainval",))

    def run(steps: int, lr: float) -> float:
        torch.manual_seed(0)
        trunk = AlexNet(widths=(16, 32, 48, 48, 32), fc_channels=64, fc6_kernel=3, input_space="rgb",
                        geometry="deploy", batch_norm=False)
        fc6, fc7 = fc_layers(trunk)
        dm = FastRCNNData(str(voc), props, test_split="trainval", train_scales=(192,), train_max_size=400,
                          test_scale=192, test_max_size=400, num_workers=0)
        task = FastRCNNTask(trunk, functools.partial(torch.optim.SGD, lr=lr, momentum=0.9), fc6=fc6, fc7=fc7,
                            dropout=0.0, score_thresh=0.0)
        trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(task, datamodule=dm)
        trainer.test(task, datamodule=dm, verbose=False)
        return task.results["voc07/det/mAP"]

    before, after = run(1, 1e-12), run(60, 0.01)
    assert after > 80 and after > before + 40, (before, after)
