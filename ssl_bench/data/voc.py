"""PASCAL VOC: annotation and classification-label reader.

Reader
------
The devkit layout is ``VOCdevkit/VOC<year>/{JPEGImages,Annotations,ImageSets/Main}`` (plus
``ImageSets/Segmentation``, ``SegmentationClass``, ``SegmentationObject`` for segmentation).
``read_annotations`` reads every XML of a split; ``read_classification`` builds the devkit's
image-level label matrix from them:

* ``1``  -- the class has at least one instance that is not marked difficult,
* ``0``  -- the class occurs, but only in instances marked difficult ("difficult" image),
* ``-1`` -- the class does not occur,

which is exactly what ``ImageSets/Main/<class>_<split>.txt`` holds (the devkit writes those files
from the same XML); where these files exist they are cross-checked.

Policy for broken files (one rule for every VOC task)
-----------------------------------------------------
Classification fine-tuning, the SVM probe (both through ``read_classification``) and detection
(through ``read_annotations``) read the XML with the same code, and all of them **stop with an
error naming the file** (and the object, where one is at fault) when a listed image or annotation
is missing, an XML does not parse, a field is missing or not a number, a class name is not one of
``VOC_CLASSES``, ``<difficult>`` is not 0 or 1, a box is inverted (xmin > xmax or ymin > ymax), or
a box lies entirely outside its image.  A VOC tree with such a file is broken: dropping those
images silently would change the benchmark.  Segmentation reads no XML; its masks follow the same
rule (``ssl_bench.transfer.voc_seg.read_mask``).

Two things are tolerated, as the devkit does:

* a missing (or empty) ``<difficult>`` means 0;
* a box partly outside the image is clipped to it -- VOC coordinates are 1-based and inclusive,
  so x to ``1..width`` and y to ``1..height`` -- and marked in ``VOCAnnotation.clipped``; the
  detection task records how many boxes were clipped.

The one thing skipped rather than fatal is an image file that exists but cannot be decoded: it is
left out of its batch and counted (``skipped_images``), as for every data set of the benchmark.

The synthetic VOC-format tree is written by :mod:`ssl_bench.data.voc_synthetic`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ssl_bench.data.images import ImageDataset
from ssl_bench.errors import DataError, MissingDataError

__all__ = ["VOC_CLASSES", "VOCAnnotation", "parse_annotation", "voc_root", "read_annotations",
           "read_classification", "read_image_set", "VOCClassification", "collate_voc", "voc_colormap"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor")
_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}
_LAYOUT = "VOCdevkit/VOC{year}/{{JPEGImages,Annotations,ImageSets/Main}}"



# ------------------------------------------------------------------------------------ reading

@dataclass
class VOCAnnotation:
    """One Annotations/<id>.xml.

    boxes: float32 N x 4 (xmin, ymin, xmax, ymax) in the XML's 1-based, inclusive pixel
    coordinates, clipped to the image (1..width, 1..height); labels: int64 N indices into
    VOC_CLASSES; difficult: bool N; clipped: bool N, True where the XML's box reached outside the
    image and was clipped.
    """

    filename: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    clipped: np.ndarray


def _text(node: ET.Element, tag: str, path: Path, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{path}: malformed VOC annotation: missing <{tag}> in {where}")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path, where: str, kind: Callable[[str], Any]) -> Any:
    raw = _text(node, tag, path, where)
    try:
        # Some VOC2012 files write integer fields as "273.0"; float() first accepts both.
        return kind(float(raw)) if kind is int else kind(raw)
    except ValueError:
        raise DataError(f"{path}: malformed VOC annotation: <{tag}> in {where} is {raw!r}, "
                        "not a number") from None


def _difficult(obj: ET.Element, path: Path, where: str) -> bool:
    node = obj.find("difficult")
    raw = "" if node is None or node.text is None else node.text.strip()
    if raw in ("", "0"):  # absent or empty: 0, the devkit's default
        return False
    if raw == "1":
        return True
    raise DataError(f"{path}: malformed VOC annotation: <difficult> in {where} is {raw!r}, expected 0 or 1")


def _box(obj: ET.Element, path: Path, where: str, width: int, height: int) -> tuple[list[float], bool]:
    """The object's box clipped to the image, and whether clipping changed it."""
    bb = obj.find("bndbox")
    if bb is None:
        raise DataError(f"{path}: malformed VOC annotation: missing <bndbox> in {where}")
    x1, y1, x2, y2 = (_number(bb, t, path, f"{where} <bndbox>", float) for t in ("xmin", "ymin", "xmax", "ymax"))
    if x1 > x2 or y1 > y2:
        raise DataError(f"{path}: invalid box in {where}: xmin {x1:g}, ymin {y1:g}, xmax {x2:g}, ymax {y2:g} "
                        "(xmin > xmax or ymin > ymax)")
    if x2 < 1 or y2 < 1 or x1 > width or y1 > height:
        raise DataError(f"{path}: invalid box in {where}: ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies entirely "
                        f"outside the {width} x {height} image (coordinates are 1..width, 1..height)")
    box = [min(max(x1, 1.0), width), min(max(y1, 1.0), height),
           min(max(x2, 1.0), width), min(max(y2, 1.0), height)]
    return box, box != [x1, y1, x2, y2]


def _image_size(root: ET.Element, path: Path) -> tuple[int, int]:
    size = root.find("size")
    if size is None:
        raise DataError(f"{path}: malformed VOC annotation: missing <size>")
    width = _number(size, "width", path, "<size>", int)
    height = _number(size, "height", path, "<size>", int)
    if width < 1 or height < 1:
        raise DataError(f"{path}: malformed VOC annotation: <size> is {width} x {height}")
    return width, height


def parse_annotation(xml_path: str | Path) -> VOCAnnotation:
    """Parse one VOC XML annotation (the module docstring's policy).  ValueError naming the file
    (and the object) for malformed XML, missing fields, an unknown class name, an invalid
    <difficult> or an inverted / entirely outside box; FileNotFoundError if the file does not exist.
    Boxes partly outside the image are clipped (``VOCAnnotation.clipped``)."""
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: malformed XML ({e})") from None
    if root.tag != "annotation":
        raise DataError(f"{path}: not a VOC annotation (root element <{root.tag}>, expected <annotation>)")
    filename = _text(root, "filename", path, "<annotation>")
    width, height = _image_size(root, path)
    boxes, labels, difficult, clipped = [], [], [], []
    for k, obj in enumerate(root.findall("object")):
        where = f"<object> #{k + 1}"
        name = _text(obj, "name", path, where)
        if name not in _CLASS_INDEX:
            raise DataError(f"{path}: unknown class name {name!r} in {where}; expected one of "
                            f"{', '.join(VOC_CLASSES)}")
        box, was_clipped = _box(obj, path, f"{where} ({name})", width, height)
        boxes.append(box)
        labels.append(_CLASS_INDEX[name])
        difficult.append(_difficult(obj, path, where))
        clipped.append(was_clipped)
    return VOCAnnotation(filename, width, height,
                         np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                         np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool),
                         np.asarray(clipped, dtype=bool))


def _has_layout(d: Path) -> bool:
    return (d / "JPEGImages").is_dir() and (d / "Annotations").is_dir() and (d / "ImageSets" / "Main").is_dir()


def voc_root(root: str | Path, year: str | int = "2007") -> Path:
    """The ``VOC<year>`` folder, given it, the ``VOCdevkit`` folder above it, or the folder that
    holds ``VOCdevkit`` (what ``write_synthetic_voc`` was given).  FileNotFoundError otherwise."""
    root = Path(root).expanduser()
    year = str(year)
    for cand in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if _has_layout(cand):
            return cand
    raise MissingDataError(
       f"{root}: no PASCAL VOC{year} data set here; expected the layout "
       f"{_LAYOUT.format(year=year)} (pass the VOCdevkit folder or the VOC{year} folder itself)")


def read_image_set(root: str | Path, year: str | int = "2007", split: str = "trainval",
                   task: str = "Main") -> list[str]:
    """Image ids listed in ``ImageSets/<task>/<split>.txt`` (order kept)."""
    base = voc_root(root, year)
    f = base / "ImageSets" / task / f"{split}.txt"
    if not f.is_file():
        have = sorted(p.stem for p in (base / "ImageSets" / task).glob("*.txt") if "_" not in p.stem)
        raise MissingDataError(f"{f}: no image set {split!r} (available: {', '.join(have) or 'none'})")
    ids = [line.split()[0] for line in f.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{f}: empty image set")
    return ids


def _class_file_labels(f: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, line in enumerate(f.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
            raise DataError(f"{f}: line {n} is {line!r}; expected '<image id> <1|0|-1>'")
        out[parts[0]] = int(parts[1])
    return out


def read_annotations(root: str | Path, year: str | int = "2007", split: str = "trainval"
                     ) -> list[tuple[str, Path, VOCAnnotation]]:
    """(image id, image path, parsed annotation) for every image of ``ImageSets/Main/<split>.txt``,
    in the listed order.  The module docstring's policy: FileNotFoundError naming the file for a
    missing image or annotation, ValueError naming the file for an unusable annotation."""
    base = voc_root(root, year)
    out = []
    for image_id in read_image_set(base, year, split):
        img = base / "JPEGImages" / f"{image_id}.jpg"
        if not img.is_file():
            raise MissingDataError(f"{img}: image listed in ImageSets/Main/{split}.txt is missing")
        xml = base / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise MissingDataError(f"{xml}: annotation of image {image_id} (ImageSets/Main/{split}.txt) "
                                   "is missing")
        out.append((image_id, img, parse_annotation(xml)))
    return out


def read_classification(root: str | Path, year: str | int = "2007",
                        split: str = "trainval") -> tuple[list[Path], np.ndarray]:
    """Image paths of ``split`` and their int8 N x 20 label matrix (1 present, 0 difficult only,
    -1 absent), built from the XML annotations (``read_annotations``, with its errors) and
    cross-checked against ``ImageSets/Main/<class>_<split>.txt`` where those exist (ValueError
    naming the file on any disagreement)."""
    base = voc_root(root, year)
    records = read_annotations(base, year, split)
    ids = [r[0] for r in records]
    labels = np.full((len(ids), len(VOC_CLASSES)), -1, dtype=np.int8)
    for i, (_, _, ann) in enumerate(records):
        for c, diff in zip(ann.labels, ann.difficult):
            # Any non-difficult instance makes the image positive; difficult-only leaves 0.
            labels[i, c] = max(labels[i, c], 0 if diff else 1)
    for c, name in enumerate(VOC_CLASSES):
        f = base / "ImageSets" / "Main" / f"{name}_{split}.txt"
        if not f.is_file():
            continue
        listed = _class_file_labels(f)
        for i, image_id in enumerate(ids):
            if image_id not in listed:
                raise DataError(f"{f}: image {image_id} of ImageSets/Main/{split}.txt is not listed")
            if listed[image_id] != labels[i, c]:
                raise DataError(f"{f}: image {image_id} is labelled {listed[image_id]} there but "
                                f"{labels[i, c]} according to Annotations/{image_id}.xml")
    return [r[1] for r in records], labels


class VOCClassification(ImageDataset):
    """VOC image-level classification: (uint8 3 x H x W image, int8 20 labels in {1, 0, -1}).

    Decoding and skip-on-error come from ``ssl_bench.data.images.ImageDataset`` (an unreadable
    image yields ``(None, path)``); batch with ``collate_voc`` (``collate_skip`` makes int64 scalars,
    not 20-vectors). VOC images differ in size, so give a ``transform`` that crops/resizes to a fixed
    size before batching.
    """

    def __init__(self, root: str | Path, year: str | int = "2007", split: str = "trainval",
                 transform: Callable[[Tensor], Tensor] | None = None) -> None:
        self.root = voc_root(root, year)
        self.paths, labels = read_classification(self.root, year, split)
        self.labels = torch.from_numpy(labels)
        super().__init__(list(zip(self.paths, self.labels)), transform)


def collate_voc(batch: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Stack decodable samples of ``VOCClassification``; report unreadable ones.

    Returns {"image": uint8 N x 3 x H x W, "label": int8 N x 20, "skipped": [paths]} (the keys of
    ``collate_skip``, so the same skip counting applies).
    """
    good = [(img, lab) for img, lab in batch if img is not None]
    skipped = [lab for img, lab in batch if img is None]
    if good:
        images = torch.stack([g[0] for g in good])
        labels = torch.stack([torch.as_tensor(g[1], dtype=torch.int8) for g in good])
    else:
        images = torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        labels = torch.empty(0, len(VOC_CLASSES), dtype=torch.int8)
    return {"image": images, "label": labels, "skipped": skipped}


# ------------------------------------------------------------------------------------ colours

def voc_colormap(n: int = 256) -> np.ndarray:
    """The devkit's label colour map (``VOClabelcolormap.m``): uint8 n x 3; index 255 = void."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap
