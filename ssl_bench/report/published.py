"""Published numbers the suite compares against, as data (reference: docs/protocols.md §4).

Every row carries where it comes from (paper and table), the protocol and the data it was measured
on, because these numbers are on full ImageNet / PASCAL VOC with the authors' training budgets:
next to a run on a small or synthetic data set they show the expected *shape* (which layer peaks,
the order of methods), not a target value.

Value keys are the leaderboard's column keys:

- probes: ``conv1`` .. ``conv5`` (ImageNet top-1 %);
- Places205 probes (the leaderboard's ``places`` section): ``places_conv1`` .. ``places_conv5``
  (top-1 %); the suite holds no published Places205 rows, so that section shows measured rows only;
- VOC: ``cls_fc6`` (classification, fc6-8 fine-tuned), ``cls_all`` (all layers fine-tuned), ``det``
  (VOC2007 detection mAP), ``seg`` (VOC2012 segmentation mIoU);
- colour: ``auc_raw``, ``auc_rebal``, ``classifier_top1``, ``amt_real``.

``None`` is a "-" in the paper (not reported).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ssl_bench.models.layers import CONV_LAYERS

SPLIT_BRAIN = "Split-Brain Autoencoders (Zhang et al., CVPR 2017)"
COLORFUL = "Colorful Image Colorization (Zhang et al., ECCV 2016)"

PROBE_PROTOCOL = ("ImageNet, frozen AlexNet, ReLU outputs of conv1..conv5 bilinearly resized to "
                  "~9k dims, batch norm without affine, linear 1000-way classifier "
                  "(SGD 140k iterations, batch 256); train crop 227 + mirror, test centre crop 227")
PROBE_DATA = "ImageNet-1k val"

VOC_PROTOCOL = ("AlexNet fine-tuned on PASCAL VOC: VOC2007 classification (only fc6-8 or all layers "
                "trained, 10-crop test), VOC2007 Fast R-CNN detection, VOC2012 FCN-32s segmentation")
VOC_RESCALED = "; weights rescaled with Krähenbühl et al.'s method before fine-tuning (†)"
VOC_DATA = "PASCAL VOC2007 (cls, det), VOC2012 (seg)"

COLOR_PROTOCOL = ("AuC of per-pixel ab L2 error over thresholds 0..150 (raw, and class-rebalanced); "
                  "top-1 of a VGG-16 trained on colour ImageNet, run on the colorized images; "
                  "AMT real-vs-fake two-alternative test, % of trials labelled real")
COLOR_DATA = "ImageNet val"


@dataclass(frozen=True)
class PublishedRow:
    """One row of a published table.

    ``suite_method`` is the suite's ``method`` string this row is the reference for (None when the
    suite has no such method); match it with :func:`matches`. ``note`` is a caveat shown with the
    protocol.
    """

    method: str
    values: Mapping[str, float | None]
    source: str
    protocol: str
    data: str
    suite_method: str | None = None
    note: str = ""
    cite: str = ""  # short form of ``source`` for narrow table cells; empty means use ``source``

    def __post_init__(self) -> None:
        # the rows are module-level constants shared by every caller: keep them read-only
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        if not self.cite:
            object.__setattr__(self, "cite", self.source)


def _layers(*v: float) -> dict[str, float]:
    return dict(zip(CONV_LAYERS, v, strict=True))


def _probe(method: str, key: str | None, *v: float) -> PublishedRow:
    return PublishedRow(method, _layers(*v), f"{SPLIT_BRAIN}, Table 2", PROBE_PROTOCOL, PROBE_DATA, key,
                        cite="Split-Brain Table 2")


# docs/protocols.md §4.1: ImageNet linear probes, top-1 %, updated bilinear protocol
PUBLISHED_PROBES: tuple[PublishedRow, ...] = (
    _probe("ImageNet labels", "supervised", 19.3, 36.3, 44.2, 48.3, 50.5),
    _probe("Gaussian", "gaussian", 11.6, 17.1, 16.9, 16.3, 14.1),
    _probe("Krähenbühl et al.", "kraehenbuehl", 17.5, 23.0, 24.5, 23.2, 20.6),
    _probe("Doersch et al. (context prediction)", "context_prediction", 16.2, 23.3, 30.2, 31.7, 29.6),
    _probe("Donahue et al. (BiGAN)", "bigan", 17.7, 24.5, 31.0, 29.9, 28.0),
    _probe("Pathak et al. (context encoder)", "context_encoder", 14.1, 20.7, 21.0, 19.8, 15.5),
    _probe("Zhang et al. (colorization)", "colorization/full", 13.1, 24.8, 31.0, 32.6, 31.8),
)


def _voc(method: str, key: str | None, cls_fc6: float | None, cls_all: float | None,
         det: float | None, seg: float | None, *, rescaled: bool = False, note: str = "") -> PublishedRow:
    return PublishedRow(method, {"cls_fc6": cls_fc6, "cls_all": cls_all, "det": det, "seg": seg},
                        f"{SPLIT_BRAIN}, Table 4", VOC_PROTOCOL + (VOC_RESCALED if rescaled else ""),
                        VOC_DATA, key, note, cite="Split-Brain Table 4")


# docs/protocols.md §4.2: PASCAL VOC transfer (†: rescaled before fine-tuning)
PUBLISHED_VOC: tuple[PublishedRow, ...] = (
    _voc("ImageNet labels", "supervised", 78.9, 79.9, 56.8, 48.0),
    _voc("Gaussian", "gaussian", None, 53.3, 43.4, 19.8),
    _voc("Autoencoder", "autoencoder", 16.0, 53.8, 41.9, 25.2),
    _voc("Krähenbühl et al.", "kraehenbuehl", 39.2, 56.6, 45.6, 32.6),
    _voc("Doersch et al.", "context_prediction", None, 55.3, 46.6, None),
    _voc("Doersch et al. †", "context_prediction", 55.1, 65.3, 51.1, None, rescaled=True),
    _voc("Pathak et al.", "context_encoder", None, 56.5, 44.5, 29.7),
    _voc("Donahue et al. †", "bigan", 52.3, 60.1, 46.9, 35.2, rescaled=True),
    _voc("Zhang et al. colorization †", "colorization/full", 61.5, 65.9, 46.9, 35.6, rescaled=True,
         note="the ECCV paper splits this into 'gray' (det 46.1, seg 35.0) and 'color' "
              "(det 46.9, seg 35.6)"),
)


def _color(method: str, key: str | None, auc_raw: float | None, auc_rebal: float | None,
           top1: float | None, amt: float | None) -> PublishedRow:
    return PublishedRow(method, {"auc_raw": auc_raw, "auc_rebal": auc_rebal, "classifier_top1": top1,
                                 "amt_real": amt},
                        f"{COLORFUL}, Table 1", COLOR_PROTOCOL, COLOR_DATA, key,
                        cite="Colorization Table 1")


# docs/protocols.md §4.3: colorization quality; only the figures confirmed from more than one source
PUBLISHED_COLOR: tuple[PublishedRow, ...] = (
    _color("Ground truth", None, 100.0, 100.0, 68.3, 50.0),
    _color("Gray", None, None, None, 52.7, None),
    _color("Random", None, None, None, None, 13.0),
    _color("Dahl", None, None, None, None, 18.3),
    _color("Larsson et al.", None, None, None, 59.4, 27.2),
    _color("Zhang et al. (L2)", "colorization/l2", None, None, None, 21.2),
    _color("Zhang et al. (class)", "colorization/class", None, None, None, 25.2),
    _color("Zhang et al. (full)", "colorization/full", 89.5, 67.3, 56.0, 32.3),
)


def matches(row: PublishedRow, method: str) -> bool:
    """Whether a measured run's ``method`` is the one ``row`` reports (see :func:`key_matches`)."""
    return key_matches(row.suite_method, method)


def key_matches(key: str | None, method: str) -> bool:
    """Whether suite method ``method`` is the one a published row with ``suite_method=key`` reports.

    A key without a variant ("gaussian") also matches the suite's "pretext/variant" spelling of it
    ("gaussian/default"); a key with a variant ("colorization/full") matches only itself, so the
    L2 and class-only colorization variants are never compared with the full method's numbers.
    """
    if key is None:
        return False
    return method == key or ("/" not in key and method.split("/", 1)[0] == key)


ALL_PUBLISHED: Mapping[str, tuple[PublishedRow, ...]] = MappingProxyType(
    {"probes": PUBLISHED_PROBES, "voc": PUBLISHED_VOC, "color": PUBLISHED_COLOR})

__all__ = ["PublishedRow", "PUBLISHED_PROBES", "PUBLISHED_VOC", "PUBLISHED_COLOR", "ALL_PUBLISHED",
           "matches", "key_matches"]
