"""PASCAL VOC2012 semantic segmentation fine-tuning: FCN-32s on the AlexNet trunk (Table 4 "Seg").

Model (Long, Shelhamer and Darrell, "Fully convolutional networks", CVPR 2015)
------------------------------------------------------------------------------
The whole trunk up to fc7 (our fc6/fc7 are already convolutions), dropout, a 1x1 score layer to
21 classes (zero-initialised, as FCN), and ONE up-convolution back to input resolution:
``ConvTranspose2d(21, 21, 2s, stride=s, bias=False)`` initialised to bilinear interpolation
(:func:`bilinear_kernel`, FCN's ``upsample_filt``, diagonal across classes).  The released FCN-32s
nets kept that layer fixed at bilinear, hence ``learn_upsampling=False`` by default (the weight is
then frozen, and the layer is computed by the equivalent, faster ``F.interpolate``; the result is the
same up to float rounding, see ``FCN32s.upsample``).

Two nets.  :class:`DeployFCN32s` is the authors' (their segmentation prototxt, FCN's voc-fcn-alexnet) on
the deploy (CaffeNet) geometry: input padded by 100, stride 32, a fixed 63-tap bilinear up-convolution
and FCN's crop (offset 18), whole training images; the ``paper`` recipe.  :class:`FCN32s` (below) reads
the training geometry's stride-16 fc7 map; the ``fast`` recipe.

Stride.  "32s" is VGG's stride; the train geometry's pool5 has stride 1, so the fc7 map has stride
``s = 16`` (fc7 is ``ceil(H / 16) x ceil(W / 16)`` for an H x W input) and the up-convolution is
32 x 32 with stride 16.  It is still the single-stream FCN-32s design (no skip layers).

Alignment (FCN's Crop layer).  With the trunk's paddings every layer keeps the centre of cell 0 at
input pixel 0: fc7 cell i is centred on pixel ``16 i``.  The bilinear kernel of size 2s peaks between
taps s-1 and s, so no integer crop can put the peak exactly on pixel ``16 i``; we crop so that it
sits at ``16 i + 0.5`` (FCN computes the same crop offset from the layer geometry; its VGG geometry
happened to give integers).  Before the up-convolution the score map is edge-replicated by one cell
on every side, so every output pixel lies between two kernel peaks and receives weights that sum to
1: a constant score map upsamples to exactly that constant, borders included (FCN instead padded
the *input* by 100 pixels; F.interpolate clamps at the borders, which is the same as replicating).
Output pixel ``o`` is full-deconvolution pixel ``o + crop_offset`` with ``crop_offset = 2 s - 1``.
For s = 2 this is exactly ``F.interpolate(scale_factor=2, mode="bilinear", align_corners=False)``;
for s = 16 it is that interpolation shifted by 7 pixels (F.interpolate centres cell i on 16 i + 7.5,
the pixel-area convention, which ignores the trunk's receptive-field geometry).

Dropout.  FCN's VGG kept the classifier's dropout after fc6 and fc7 (drop6, drop7, p = 0.5).  The
trunk is a black box here (``forward_features``), so only drop7 is reproduced: ``dropout=0.5`` on
the fc7 map before the score layer (set 0 to disable).

Data
----
VOC2012: ``ImageSets/Segmentation/<split>.txt`` ids, ``JPEGImages/<id>.jpg`` and
``SegmentationClass/<id>.png`` (palette PNG: 0 background, 1..20 classes, 255 void).  Optional SBD
augmentation (Hariharan et al., "Semantic contours from inverse detectors", ICCV 2011), as FCN did
for VOC2012: pass ``sbd_root`` = SBD's ``benchmark_RELEASE/dataset`` folder (or the
``benchmark_RELEASE`` folder above it), which holds::

    img/<id>.jpg            the images (VOC2011 ids)
    cls/<id>.mat            GTcls struct; GTcls.Segmentation = uint8 H x W class map (0..20, no void)
    train.txt, val.txt      SBD's splits (one id per line)

With ``sbd_root`` the training set (split "train" only) is VOC ``train`` plus every SBD train+val id
that is neither in VOC2012 ``val`` nor already in VOC ``train`` (the usual 10,582-image
"train_aug"); VOC's own PNG is used for ids in both.  Testing is on VOC2012 val.

Augmentation (train): random scale in ``scale_range`` (image bilinear with antialiasing, mask
nearest), padding to ``crop_size`` (image with the mean pixel, which is ~0 after the trunk's input
normalisation as Caffe's zero padding after mean subtraction; mask with 255 = ignored), random
``crop_size`` crop, horizontal flip -- the same geometry applied to image and mask.  FCN itself
trained on whole images with batch size 1 and no augmentation; crops make batches possible.
Test: whole images (FCN's protocol), batched by padding to the largest image of the batch (mask 255,
so padded pixels are never counted); ``test_batch_size=1`` (default) runs each image alone.

Loss / optimisation.  Per-pixel cross-entropy with ``ignore_index=255``, averaged over the valid
pixels (FCN summed over pixels with lr 1e-10, momentum 0.99; averaging keeps the usual learning
rates).  Optimiser and schedule are partial factories (``ssl_bench.pretext.common``).

Metric.  One pass over the test set accumulates the 21 x 21 pixel confusion matrix (rows = target,
columns = prediction, void pixels skipped); mean IoU over the 21 classes, background included (the
VOC convention; a class absent from both target and prediction has no IoU and is left out of the
mean), pixel accuracy, and per-class IoU, all in %.  Under DDP the matrices are summed across ranks
before the metrics are computed.  (Lightning's distributed sampler pads the last shard with repeated
images; run the test on one device for the exact number.)

Unreadable images are skipped and counted (``task.skips``); an unreadable or invalid mask is an
error naming the file (it would silently change the benchmark) -- the policy of every VOC task
(``ssl_bench.data.voc``).  An RGB mask is accepted only when every colour is exactly a VOC class or
void colour (then mapped back to indices); otherwise it is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ssl_bench.data.images import DECODE_ERRORS, SkipCounter, decode_rgb
from ssl_bench.data.voc import VOC_CLASSES, read_image_set, voc_colormap, voc_root
from ssl_bench.errors import ConfigError, DataError, MissingDataError
from ssl_bench.metrics import confusion_matrix, mean_iou, per_class_iou, pixel_accuracy, voc_prefix
from ssl_bench.models.inputs import RGB_MEAN, trunk_input
from ssl_bench.models.optim import caffe_bias_optimizers
from ssl_bench.pretext.common import check_finite
from ssl_bench.transfer.loaders import sharded_loader

__all__ = ["IGNORE_INDEX", "MEAN_PIXEL", "NUM_CLASSES", "SEG_CLASSES", "DeployFCN32s", "FCN32s", "SegTrainTransform",
           "VOCSegmentationData", "VOCSegmentationDataset", "VOCSegmentationTask", "bilinear_kernel",
           "build_fcn", "collate_seg", "coordinate_map", "read_mask", "read_sbd_mask", "sbd_dataset_dir",
           "trunk_layers"]

NUM_CLASSES = 21
IGNORE_INDEX = 255
SEG_CLASSES: tuple[str, ...] = ("background", *VOC_CLASSES)
# The ImageNet mean as a uint8 pixel: padding with it gives ~0 after the "rgb" normalisation.
MEAN_PIXEL: tuple[int, int, int] = tuple(int(round(255 * m)) for m in RGB_MEAN)  # (124, 116, 104)
_VALID_LABELS = np.array([*range(NUM_CLASSES), IGNORE_INDEX])


# ------------------------------------------------------------------------------------ reading

def _check_labels(a: np.ndarray, path: Path | str) -> np.ndarray:
    if a.ndim != 2:
        raise DataError(f"{path}: segmentation mask must be a 2-D class map, got shape {a.shape}")
    values = np.unique(a)
    bad = np.setdiff1d(values, _VALID_LABELS)
    if bad.size:
        raise DataError(f"{path}: segmentation mask holds values {bad[:10].tolist()} outside 0..20 "
                        f"and {IGNORE_INDEX} (void)")
    return a.astype(np.uint8, copy=False)


def _rgb_to_classes(rgb: np.ndarray, path: Path) -> np.ndarray:
    """An RGB mask painted in the devkit's colours -> class indices, exactly: every colour must be
    the colour of a class 0..20 or of void; any other colour (a blended edge, a JPEG artefact, a
    foreign palette) is an error, since guessing its class would change the ground truth."""
    index = {tuple(int(v) for v in voc_colormap()[i]): i for i in _VALID_LABELS}
    colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    found = [tuple(int(v) for v in c) for c in colours]
    unknown = [c for c in found if c not in index]
    if unknown:
        raise DataError(f"{path}: RGB segmentation mask holds {len(unknown)} colour(s) that are not VOC "
                        f"class colours, e.g. {unknown[:5]}; expected a palette ('P') PNG of class "
                        "indices or exactly the devkit's colours for classes 0..20 and void")
    lut = np.array([index[c] for c in found], dtype=np.uint8)
    return lut[inverse.reshape(-1)].reshape(rgb.shape[:2])


def read_mask(path: str | Path) -> np.ndarray:
    """A VOC ``SegmentationClass`` PNG as uint8 H x W class indices (0..20, 255 void).

    Palette ("P") PNGs give their palette indices (not colours); greyscale ("L") PNGs their values;
    RGB PNGs are mapped back through the devkit's colour map when every colour is a class or void
    colour.  ValueError naming the file for another mode, another colour, or values outside 0..20
    and 255.
    """
    path = Path(path)
    with Image.open(path) as im:
        if im.mode == "RGB":
            return _rgb_to_classes(np.array(im), path)
        if im.mode not in ("P", "L"):
            raise DataError(f"{path}: segmentation mask has PIL mode {im.mode!r}; expected a palette "
                            "('P') or greyscale ('L') PNG of class indices, or an RGB PNG in VOC colours")
        a = np.array(im)
    return _check_labels(a, path)


def read_sbd_mask(path: str | Path) -> np.ndarray:
    """SBD ``cls/<id>.mat``: ``GTcls.Segmentation`` as uint8 H x W (0..20).  ValueError naming the
    file when it is not such a .mat."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except (ValueError, TypeError, NotImplementedError, OSError) as e:
        raise DataError(f"{path}: not a readable SBD .mat file ({e})") from None
    gt = mat.get("GTcls")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise DataError(f"{path}: no GTcls.Segmentation in this .mat (keys: "
                        f"{sorted(k for k in mat if not k.startswith('__'))}); expected SBD's cls/ files")
    a = np.asarray(seg)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(a == np.round(a)):
            raise DataError(f"{path}: GTcls.Segmentation must hold integer class indices, got {a.dtype}")
    return _check_labels(a, path)


def sbd_dataset_dir(sbd_root: str | Path) -> Path:
    """SBD's ``benchmark_RELEASE/dataset`` folder, given it or a folder above it."""
    root = Path(sbd_root).expanduser()
    for cand in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir() and (cand / "img").is_dir():
            for split in ("train.txt", "val.txt"):
                if not (cand / split).is_file():
                    raise MissingDataError(f"{cand / split}: SBD split file is missing")
            return cand
    raise MissingDataError(f"{root}: no SBD data set here; expected benchmark_RELEASE/dataset with "
                           "img/<id>.jpg, cls/<id>.mat, train.txt and val.txt")


def _read_ids(f: Path) -> list[str]:
    return [line.split()[0] for line in f.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ transforms

def _pad_to(image: Tensor, mask: Tensor, height: int, width: int,
            fill: Sequence[int] = MEAN_PIXEL) -> tuple[Tensor, Tensor]:
    """Pad bottom/right to at least height x width: image with ``fill``, mask with 255."""
    h, w = mask.shape
    if h >= height and w >= width:
        return image, mask
    H, W = max(h, height), max(w, width)
    img = torch.tensor(fill, dtype=image.dtype).view(3, 1, 1).expand(3, H, W).clone()
    img[:, :h, :w] = image
    msk = torch.full((H, W), IGNORE_INDEX, dtype=mask.dtype)
    msk[:h, :w] = mask
    return img, msk


class SegTrainTransform:
    """Joint training augmentation of (uint8 3 x H x W image, uint8 H x W mask).

    Random scale s ~ U(scale_range) (image bilinear + antialias, mask nearest), pad to crop_size
    (image ``fill``, mask 255), random crop_size x crop_size crop, horizontal flip with p = 0.5.
    Randomness from torch's generator (per-worker seeds in DataLoader workers), or ``generator``.
    """

    def __init__(self, crop_size: int = 320, scale_range: Sequence[float] = (0.5, 1.5),
                 flip: bool = True, fill: Sequence[int] = MEAN_PIXEL) -> None:
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range: expected 0 < low <= high, got {tuple(scale_range)}")
        if crop_size < 1:
            raise ConfigError(f"crop_size: expected a positive size, got {crop_size}")
        self.crop_size, self.scale_range, self.flip, self.fill = int(crop_size), (lo, hi), flip, tuple(fill)

    def __call__(self, image: Tensor, mask: Tensor,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        lo, hi = self.scale_range
        s = lo + (hi - lo) * float(torch.rand((), generator=generator))
        h, w = mask.shape
        if s != 1.0:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            if size != (h, w):
                image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                                      antialias=True)[0].round_().clamp_(0, 255).to(torch.uint8)
                mask = F.interpolate(mask[None, None].float(), size=size,
                                     mode="nearest-exact")[0, 0].to(torch.uint8)
        c = self.crop_size
        image, mask = _pad_to(image, mask, c, c, self.fill)
        h, w = mask.shape
        y = int(torch.randint(h - c + 1, (), generator=generator))
        x = int(torch.randint(w - c + 1, (), generator=generator))
        image, mask = image[:, y:y + c, x:x + c], mask[y:y + c, x:x + c]
        if self.flip and float(torch.rand((), generator=generator)) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image.contiguous(), mask.contiguous()


# ------------------------------------------------------------------------------------ data set

class VOCSegmentationDataset(Dataset):
    """VOC segmentation: items are (uint8 3 x H x W image, uint8 H x W mask), or (None, path) for an
    unreadable image (batch with :func:`collate_seg`, which reports it as skipped).

    Args:
        root: the VOC<year> folder, the VOCdevkit above it, or the folder holding VOCdevkit.
        year: VOC year ("2012").
        split: ``ImageSets/Segmentation/<split>.txt`` (e.g. "seg11valid" with FCN's 736-image list placed
            there), or "sbd_train": exactly SBD's ``train.txt`` images and labels (the papers' training set).
        sbd_root: SBD's ``benchmark_RELEASE/dataset`` (see the module docstring); with split "train" it
            adds SBD train+val ids that are not in VOC ``val``; split "sbd_train" needs it.
        transform: joint ``(image, mask) -> (image, mask)`` (e.g. :class:`SegTrainTransform`).
    Every listed image and label file must exist (FileNotFoundError naming the first missing one).
    """

    def __init__(self, root: str | Path, year: str | int = "2012", split: str = "train",
                 sbd_root: str | Path | None = None,
                 transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None) -> None:
        self.root = voc_root(root, year)
        self.year, self.split, self.transform = str(year), split, transform
        if split == "sbd_train":
            if sbd_root is None:
                raise ConfigError("task.datamodule.sbd_root: the split 'sbd_train' (SBD's train.txt) needs the "
                                  "SBD dataset folder (benchmark_RELEASE/dataset)")
            sbd = sbd_dataset_dir(sbd_root)
            self.samples = [(i, sbd / "img" / f"{i}.jpg", sbd / "cls" / f"{i}.mat")
                            for i in _read_ids(sbd / "train.txt")]
            self.num_sbd = len(self.samples)
            self._check_files()
            return
        ids = read_image_set(self.root, year, split, task="Segmentation")
        self.samples: list[tuple[str, Path, Path]] = [
            (i, self.root / "JPEGImages" / f"{i}.jpg", self.root / "SegmentationClass" / f"{i}.png")
            for i in ids]
        self.num_sbd = 0
        if sbd_root is not None:
            if split != "train":
                raise ConfigError(f"sbd_root: SBD augmentation applies to the VOC 'train' split only "
                                  f"(got split={split!r}); SBD overlaps VOC val and test must stay clean")
            sbd = sbd_dataset_dir(sbd_root)
            exclude = set(read_image_set(self.root, year, "val", task="Segmentation")) | set(ids)
            extra: list[str] = []
            seen: set[str] = set()
            for i in _read_ids(sbd / "train.txt") + _read_ids(sbd / "val.txt"):
                if i not in exclude and i not in seen:
                    seen.add(i)
                    extra.append(i)
            self.samples += [(i, sbd / "img" / f"{i}.jpg", sbd / "cls" / f"{i}.mat") for i in extra]
            self.num_sbd = len(extra)
        self._check_files()

    def _check_files(self) -> None:
        for image_id, img, lab in self.samples:
            for f, what in ((img, "image"), (lab, "segmentation label")):
                if not f.is_file():
                    raise MissingDataError(f"{f}: {what} of {image_id} (listed in {self.split}) is missing")

    @property
    def ids(self) -> list[str]:
        return [s[0] for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def read_label(self, index: int) -> np.ndarray:
        path = self.samples[index][2]
        return read_sbd_mask(path) if path.suffix == ".mat" else read_mask(path)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor] | tuple[None, str]:
        _, img_path, lab_path = self.samples[index]
        try:
            image = decode_rgb(img_path)
        except DECODE_ERRORS:
            return None, str(img_path)
        mask = torch.from_numpy(self.read_label(index))
        if tuple(image.shape[1:]) != tuple(mask.shape):
            raise DataError(f"{lab_path}: label is {tuple(mask.shape)} but image {img_path} is "
                            f"{tuple(image.shape[1:])} (H x W)")
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask


def collate_seg(batch: list[tuple[Any, Any]], fill: Sequence[int] = MEAN_PIXEL) -> dict[str, Any]:
    """Stack decodable samples, padding bottom/right to the largest one (image ``fill``, mask 255).

    Returns {"image": uint8 N x 3 x H x W, "mask": uint8 N x H x W, "skipped": [paths]}.
    """
    good = [(img, m) for img, m in batch if img is not None]
    skipped = [m for img, m in batch if img is None]
    if not good:
        return {"image": torch.empty(0, 3, 1, 1, dtype=torch.uint8),
                "mask": torch.empty(0, 1, 1, dtype=torch.uint8), "skipped": skipped}
    H = max(m.shape[0] for _, m in good)
    W = max(m.shape[1] for _, m in good)
    padded = [_pad_to(img, m, H, W, fill) for img, m in good]
    return {"image": torch.stack([p[0] for p in padded]), "mask": torch.stack([p[1] for p in padded]),
            "skipped": skipped}


class VOCSegmentationData(pl.LightningDataModule):
    """Train on ``train_split`` (+ SBD) with :class:`SegTrainTransform` (``crop_size=None``: whole
    images, unaugmented, as FCN's data layer; use batch size 1 or they are padded), test on whole
    ``test_split`` images (``test_batch_size`` per batch, padded; 1 = FCN's protocol)."""

    def __init__(self, root: str | Path, year: str | int = "2012", train_split: str = "train",
                 test_split: str = "val", sbd_root: str | Path | None = None, crop_size: int | None = 320,
                 scale_range: Sequence[float] = (0.5, 1.5), batch_size: int = 8, num_workers: int = 2,
                 test_batch_size: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)  # the training order (DDP ranks split the same global batches)
        self.root, self.year = root, str(year)
        self.train_split, self.test_split, self.sbd_root = train_split, test_split, sbd_root
        # no crop size: whole training images as FCN's data layer reads them (no scaling, no flip)
        self.transform = None if crop_size is None else SegTrainTransform(crop_size, scale_range)
        self.batch_size, self.test_batch_size, self.num_workers = batch_size, test_batch_size, num_workers
        self.train_set: VOCSegmentationDataset | None = None
        self.test_set: VOCSegmentationDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = VOCSegmentationDataset(self.root, self.year, self.train_split, self.sbd_root,
                                                    transform=self.transform)
        if stage in (None, "test") and self.test_set is None:
            self.test_set = VOCSegmentationDataset(self.root, self.year, self.test_split)

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return sharded_loader(ds, batch_size, shuffle, self.seed, collate_seg, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, self.batch_size, True)

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self._loader(self.test_set, self.test_batch_size, False)


# ------------------------------------------------------------------------------------ model

def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """FCN's ``upsample_filt`` as a ``channels x channels x k x k`` up-convolution weight that
    interpolates every channel separately (the 2-D filter on the diagonal, zeros elsewhere).

    1-D taps: ``1 - |t - c| / f`` with ``f = ceil(k / 2)``, ``c = f - 1`` for odd k and ``f - 0.5``
    for even k; e.g. k = 4 -> (0.25, 0.75, 0.75, 0.25).
    """
    f = (kernel_size + 1) // 2
    center = f - 1 if kernel_size % 2 == 1 else f - 0.5
    t = torch.arange(kernel_size, dtype=torch.float64)
    taps = 1 - (t - center).abs() / f
    filt = (taps[:, None] * taps[None, :]).float()
    w = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    w[idx, idx] = filt
    return w


class FCN32s(nn.Module):
    """trunk -> fc7 -> dropout -> 1x1 score (zero init) -> bilinear up-convolution -> input size.

    Args:
        trunk: has ``forward_features(x, ("fc7",))``, ``out_channels`` (and ``input_space``).
        num_classes: 21 for VOC.
        stride: the fc7 map's stride (16 for this AlexNet: pool5 has stride 1).
        learn_upsampling: train the up-convolution (False = FCN-32s' fixed bilinear layer).
        dropout: on the fc7 map (FCN's drop7); 0 disables it.
    ``forward(x)``: float trunk input N x C x H x W -> logits N x num_classes x H x W.
    """

    def __init__(self, trunk: nn.Module, num_classes: int = NUM_CLASSES, stride: int = 16,
                 learn_upsampling: bool = False, dropout: float = 0.5, layer: str = "fc7") -> None:
        super().__init__()
        self.trunk, self.layer, self.stride, self.num_classes = trunk, layer, int(stride), num_classes
        self.input_space = getattr(trunk, "input_space", "rgb")
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.score = nn.Conv2d(int(trunk.out_channels), num_classes, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        k = 2 * self.stride
        self.upscore = nn.ConvTranspose2d(num_classes, num_classes, k, stride=self.stride, bias=False)
        with torch.no_grad():
            self.upscore.weight.copy_(bilinear_kernel(num_classes, k))
        self.learn_upsampling = learn_upsampling
        self.upscore.weight.requires_grad_(learn_upsampling)
        # Output pixel o = full up-convolution pixel o + crop_offset (see the module docstring):
        # one replicated border cell (s pixels) plus s - 1 puts cell i's peak at pixel s*i + 0.5.
        self.crop_offset = 2 * self.stride - 1

    def upsample(self, score: Tensor, size: Sequence[int]) -> Tensor:
        """N x K x h x w score map -> N x K x H x W (the up-convolution plus the crop)."""
        H, W = int(size[0]), int(size[1])
        s, off = self.stride, self.crop_offset
        h, w = score.shape[-2:]
        if H > s * (h + 1) + 1 or W > s * (w + 1) + 1:
            raise ValueError(f"FCN32s: a {h} x {w} score map at stride {s} cannot cover a {H} x {W} "
                             f"input; is the trunk's stride {s}?")
        x = F.pad(score, (1, 1, 1, 1), mode="replicate")
        if self.learn_upsampling:
            up = self.upscore(x)
        else:
            # The frozen layer is bilinear: F.interpolate (align_corners=False, exact factor s) gives
            # the same taps, its output shifted by s/2 (cell j peaks at s*j + s/2 - 0.5 instead of
            # s*j + s - 0.5); 3x faster on CPU than the 21 x 21 (or grouped) up-convolution.
            h, w = x.shape[-2:]
            up = F.interpolate(x, size=(s * h, s * w), mode="bilinear", align_corners=False)
            off -= s // 2
        return up[..., off:off + H, off:off + W]

    def forward(self, x: Tensor) -> Tensor:
        feat = self.trunk.forward_features(x, (self.layer,))[self.layer]
        return self.upsample(self.score(self.drop(feat)), x.shape[-2:])


# The CaffeNet (deploy) layers in front of fc7, in order: each block's convolution, and the pooling
# after conv1, conv2 and conv5 (a colour branch shares conv1's geometry).
_DEPLOY_PATH = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")


def trunk_layers(trunk: nn.Module) -> list[tuple[int, int, int, int]]:
    """(kernel, stride, padding, dilation) of every layer from the input to fc7 of an AlexNet trunk
    (or of the AlexNet a ``ColorInputTrunk`` wraps, or of a split-brain trunk's halves, which share
    one geometry), along one spatial axis."""
    base = getattr(trunk, "trunk", trunk)
    base = base.halves[0] if hasattr(base, "halves") else base
    out = []
    for name in _DEPLOY_PATH:
        layer = getattr(base, name, None)
        layer = layer[0] if isinstance(layer, nn.Sequential) else layer
        if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            raise ConfigError(f"task.module.geometry=deploy: the trunk has no {name} convolution or pooling "
                              "(FCN-32s in the deploy geometry needs an AlexNet trunk)")
        k, s, p, d = (v if isinstance(v, int) else v[0]
                      for v in (layer.kernel_size, layer.stride, layer.padding, layer.dilation))
        out.append((k, s, p, d))
    return out


def coordinate_map(layers: Sequence[tuple[int, int, int, int]], input_pad: int = 0) -> tuple[int, float]:
    """(stride S, centre B): cell y of the last layer's map is centred on input pixel ``S * y + B``,
    with the input zero-padded by ``input_pad`` on every side (FCN's ``coord_map``)."""
    stride, centre = 1, float(-input_pad)
    for k, s, p, d in layers:
        centre += stride * ((d * (k - 1)) / 2 - p)
        stride *= s
    return stride, centre


class DeployFCN32s(nn.Module):
    """FCN-32s exactly as the authors' segmentation net (FCN's voc-fcn-alexnet) on the deploy trunk.

    The input is zero-padded by ``input_pad`` (FCN's conv1 ``pad: 100``; zero is the mean pixel after
    the trunk's input normalisation, as Caffe's zero padding after mean subtraction), the trunk runs to
    fc7 (fc6/fc7 are convolutions on the pool5 map: stride S = 32), then dropout (0: the trunk's drop6 /
    drop7 are FCN's), a zero-initialised 1x1 score layer, a fixed bilinear up-convolution
    (``2 S - 1`` = 63 taps, stride S, one filter per class, no bias: FCN's ``upscore`` with
    ``surgery.interp``) and FCN's crop back to the input: output pixel o is up-convolution pixel
    ``o + crop_offset``, the offset that puts score cell y's peak on the input pixel its receptive
    field is centred on (18 for CaffeNet with pad 100, the ``crop_param offset`` of FCN's prototxt).

    ``forward(x)``: float trunk input N x C x H x W -> logits N x num_classes x H x W.
    """

    def __init__(self, trunk: nn.Module, num_classes: int = NUM_CLASSES, input_pad: int = 100,
                 dropout: float = 0.0, layer: str = "fc7") -> None:
        super().__init__()
        self.trunk, self.layer, self.num_classes, self.input_pad = trunk, layer, num_classes, int(input_pad)
        self.input_space = getattr(trunk, "input_space", "rgb")
        stride, centre = coordinate_map(trunk_layers(trunk), self.input_pad)
        k = 2 * stride - 1
        offset = (k - 1) / 2 - centre
        if offset < 0 or offset != int(offset):
            raise ConfigError(f"task.module.input_pad={input_pad}: the score map's cells are centred at "
                              f"{stride} y + {centre}; FCN's crop needs a whole non-negative offset, got {offset}")
        self.stride, self.crop_offset = stride, int(offset)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.score = nn.Conv2d(int(trunk.out_channels), num_classes, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.upscore = nn.ConvTranspose2d(num_classes, num_classes, k, stride=stride, groups=num_classes,
                                          bias=False)
        with torch.no_grad():
            self.upscore.weight.copy_(bilinear_kernel(1, k).expand(num_classes, 1, k, k))
        self.upscore.weight.requires_grad_(False)

    def upsample(self, score: Tensor, size: Sequence[int]) -> Tensor:
        """N x K x h x w score map -> N x K x H x W (the up-convolution, then FCN's crop)."""
        H, W = int(size[0]), int(size[1])
        up, off = self.upscore(score), self.crop_offset
        if up.shape[-2] < off + H or up.shape[-1] < off + W:
            raise ValueError(f"DeployFCN32s: a {tuple(score.shape[-2:])} score map does not cover a {H} x {W} "
                             f"input after the crop of {off}; is input_pad ({self.input_pad}) too small?")
        return up[..., off:off + H, off:off + W]

    def forward(self, x: Tensor) -> Tensor:
        p = self.input_pad
        feat = self.trunk.forward_features(F.pad(x, (p, p, p, p)), (self.layer,))[self.layer]
        return self.upsample(self.score(self.drop(feat)), x.shape[-2:])


def build_fcn(trunk: nn.Module, num_classes: int, geometry: str, stride: int, learn_upsampling: bool,
              dropout: float, input_pad: int) -> nn.Module:
    """The FCN-32s of the trunk's geometry; ConfigError naming the key when the trunk's stride is not
    ``stride`` or a deploy net is asked to learn its upsampling."""
    if geometry == "train":
        return FCN32s(trunk, num_classes, stride=stride, learn_upsampling=learn_upsampling, dropout=dropout)
    if geometry != "deploy":
        raise ConfigError(f"task.module.geometry: expected 'train' or 'deploy', got {geometry!r}")
    if learn_upsampling:
        raise ConfigError("task.module.learn_upsampling: the deploy FCN-32s keeps FCN's upsampling fixed")
    model = DeployFCN32s(trunk, num_classes, input_pad=input_pad, dropout=dropout)
    if model.stride != int(stride):
        raise ConfigError(f"task.module.stride={stride}: the deploy trunk's fc7 map has stride {model.stride}")
    return model


class VOCSegmentationTask(pl.LightningModule):
    """Fine-tune an FCN-32s on VOC segmentation; ``trainer.test`` fills ``self.results``.

    Args:
        trunk: the transfer-ready trunk (``forward_features``, ``input_space``, ``out_channels``).
        optimizer, scheduler: partial factories (schedulers step per iteration).
        num_classes: 21.
        learn_upsampling: see :class:`FCN32s`.
        year: the metric namespace ``voc_prefix(year)/seg/...`` ("2012" -> ``voc12/seg/...``).
        dropout: FCN's drop7 on fc7.
        geometry: the trunk's geometry: "train" (:class:`FCN32s` at ``stride``) or "deploy"
            (:class:`DeployFCN32s`, the authors' net, whose stride the trunk fixes).
        stride: the fc7 map's stride the net is expected to have (16 for train, 32 for deploy); a
            trunk with another stride is an error naming ``task.module.stride``.
        input_pad: deploy only, FCN's conv1 padding of the input (100).
        bias_lr_mult, bias_decay_mult: Caffe's lr_mult / decay_mult of every trained bias (the authors'
            net: 2 and 0).
    Batches: {"image": uint8 N x 3 x H x W, "mask": uint8/int64 N x H x W, "skipped": [paths]}.
    Logs ``voc12/seg/loss`` (for year 2012); after the test, ``results`` = {``voc12/seg/mIoU``,
    ``voc12/seg/pixel_acc``, ``voc12/seg/IoU/<class>``} in %, and ``confusion`` (int64 C x C,
    rows = target, columns = prediction).
    """

    def __init__(self, trunk: nn.Module, optimizer: Callable[..., Any],
                 scheduler: Callable[..., Any] | None = None, num_classes: int = NUM_CLASSES,
                 learn_upsampling: bool = False, year: str | int = "2012", dropout: float = 0.5,
                 geometry: str = "train", stride: int = 16, input_pad: int = 100, bias_lr_mult: float = 1.0,
                 bias_decay_mult: float = 1.0) -> None:
        super().__init__()
        self.bias_lr_mult, self.bias_decay_mult = float(bias_lr_mult), float(bias_decay_mult)
        self.model = build_fcn(trunk, num_classes, geometry, stride, learn_upsampling, dropout, input_pad)
        self.input_space = self.model.input_space
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.num_classes, self.prefix = num_classes, f"{voc_prefix(year)}/seg"
        self.class_names = SEG_CLASSES if num_classes == NUM_CLASSES else tuple(str(c) for c in range(num_classes))
        self.skips = SkipCounter()
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.results: dict[str, float] = {}

    def forward(self, images: Tensor) -> Tensor:
        """uint8 N x 3 x H x W -> logits N x num_classes x H x W."""
        return self.model(trunk_input(images, self.input_space))

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        """uint8 N x 3 x H x W -> int64 N x H x W predicted classes."""
        return self(images).argmax(1)

    def _batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        self.skips.add(batch["skipped"])
        if batch["image"].shape[0] == 0:
            return None
        return batch["image"], batch["mask"].long()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        got = self._batch(batch)
        if got is None:
            return None
        images, masks = got
        logits = self(images)
        valid = (masks != IGNORE_INDEX).sum()
        # mean over valid pixels; 0 (not nan) for an all-void batch
        loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum") / valid.clamp(min=1)
        check_finite(loss, self.global_step, f"{self.prefix}/loss")
        self.log(f"{self.prefix}/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def on_test_epoch_start(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.results = {}

    def accumulate(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch's pixels to the confusion matrix (targets 255 skipped)."""
        self.confusion += confusion_matrix(pred, target, self.num_classes, ignore_index=IGNORE_INDEX)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        got = self._batch(batch)
        if got is None:
            return
        images, masks = got
        self.accumulate(self.segment(images), masks)

    def compute_results(self, confusion: np.ndarray) -> dict[str, float]:
        iou = per_class_iou(confusion)
        out = {f"{self.prefix}/mIoU": 100.0 * mean_iou(confusion),
               f"{self.prefix}/pixel_acc": 100.0 * pixel_accuracy(confusion)}
        out.update({f"{self.prefix}/IoU/{name}": 100.0 * float(v) for name, v in zip(self.class_names, iou)})
        return out

    def on_test_epoch_end(self) -> None:
        cm = self.confusion
        if self._trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(torch.as_tensor(cm, device=self.device), reduce_op="sum")
            cm = total.cpu().numpy().astype(np.int64)
        self.confusion = cm
        self.results = self.compute_results(cm)
        for k, v in self.results.items():
            self.log(k, v, sync_dist=False)

    def configure_optimizers(self) -> Any:
        """SGD on [weights, biases], the biases' lr and weight decay scaled by ``bias_lr_mult`` /
        ``bias_decay_mult`` before the scheduler is built (its base lrs include the multiplier)."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        biases = [p for n, p in named if n.endswith(".bias") and p.dim() == 1]
        ids = {id(p) for p in biases}
        opt = self.optimizer_factory([{"params": [p for _, p in named if id(p) not in ids]}, {"params": biases}])
        return caffe_bias_optimizers(opt, self.scheduler_factory, self.bias_lr_mult, self.bias_decay_mult)
