"""PASCAL VOC: annotation and classification-label reader.

Reader
------
The devkit layout is ``VOCdevkit/VOC<year>/{JPEGImages,Annotations,ImageSets/Main}`` (plus
``ImageSets/Segmentation``, ``SegmentationClass``, ``SegmentationObject`` for segmentation).
``read_classification`` builds the devkit's image-level label matrix from the XML annotations:

* ``1``  -- the class has at least one instance that is not marked difficult,
* ``0``  -- the class occurs, but only in instances marked difficult ("difficult" image),
* ``-1`` -- the class does not occur,

which is exactly what ``ImageSets/Main/<class>_<split>.txt`` holds (the devkit writes those files
from the same XML); where these files exist they are cross-checked.

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

__all__ = ["VOC_CLASSES", "VOCAnnotation", "parse_annotation", "voc_root", "read_classification",
           "read_image_set", "VOCClassification", "collate_voc", "voc_colormap"]

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

    boxes: float32 N x 4 (xmin, ymin, xmax, ymax) exactly as in the XML (1-based, inclusive pixel
    coordinates); labels: int64 N indices into VOC_CLASSES; difficult: bool N.
    """

    filename: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def _text(node: ET.Element, tag: str, path: Path, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{path}: malformed VOC annotation: missing <{tag}> in {where}")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path, where: str, kind: Callable[[str], Any]) -> Any:
    raw = _text(node, tag, path, where)
    try:
        # Some VOC2012 files write integer fields as "273.0"; float() first accepts both.
        return kind(float(raw)) if kind is int else kind(raw)
    except ValueError:
        raise ValueError(f"{path}: malformed VOC annotation: <{tag}> in {where} is {raw!r}, "
                         "not a number") from None


def parse_annotation(xml_path: str | Path) -> VOCAnnotation:
    """Parse one VOC XML annotation.  ValueError (naming the file) for malformed XML, missing
    fields or an unknown class name; FileNotFoundError if the file does not exist."""
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: malformed XML ({e})") from None
    if root.tag != "annotation":
        raise ValueError(f"{path}: not a VOC annotation (root element <{root.tag}>, expected <annotation>)")
    filename = _text(root, "filename", path, "<annotation>")
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: malformed VOC annotation: missing <size>")
    width = _number(size, "width", path, "<size>", int)
    height = _number(size, "height", path, "<size>", int)
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        where = f"<object> #{k + 1}"
        name = _text(obj, "name", path, where)
        if name not in _CLASS_INDEX:
            raise ValueError(f"{path}: unknown class name {name!r} in {where}; expected one of "
                             f"{', '.join(VOC_CLASSES)}")
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{path}: malformed VOC annotation: missing <bndbox> in {where}")
        boxes.append([_number(bb, t, path, f"{where} <bndbox>", float)
                      for t in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(_CLASS_INDEX[name])
        diff = obj.find("difficult")
        # A missing <difficult> means 0, as in the devkit's reader.
        difficult.append(diff is not None and diff.text is not None and diff.text.strip() not in ("", "0"))
    return VOCAnnotation(filename, width, height,
                         np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                         np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool))


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
    raise FileNotFoundError(
        f"{root}: no PASCAL VOC{year} data set here; expected the layout "
        f"{_LAYOUT.format(year=year)} (pass the VOCdevkit folder or the VOC{year} folder itself)")


def read_image_set(root: str | Path, year: str | int = "2007", split: str = "trainval",
                   task: str = "Main") -> list[str]:
    """Image ids listed in ``ImageSets/<task>/<split>.txt`` (order kept)."""
    base = voc_root(root, year)
    f = base / "ImageSets" / task / f"{split}.txt"
    if not f.is_file():
        have = sorted(p.stem for p in (base / "ImageSets" / task).glob("*.txt") if "_" not in p.stem)
        raise FileNotFoundError(f"{f}: no image set {split!r} (available: {', '.join(have) or 'none'})")
    ids = [line.split()[0] for line in f.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{f}: empty image set")
    return ids


def _class_file_labels(f: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, line in enumerate(f.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
            raise ValueError(f"{f}: line {n} is {line!r}; expected '<image id> <1|0|-1>'")
        out[parts[0]] = int(parts[1])
    return out


def read_classification(root: str | Path, year: str | int = "2007",
                        split: str = "trainval") -> tuple[list[Path], np.ndarray]:
    """Image paths of ``split`` and their int8 N x 20 label matrix (1 present, 0 difficult only,
    -1 absent), built from the XML annotations and cross-checked against
    ``ImageSets/Main/<class>_<split>.txt`` where those exist (ValueError naming the file on any
    disagreement).  FileNotFoundError naming the file for a missing image or annotation."""
    base = voc_root(root, year)
    ids = read_image_set(base, year, split)
    paths: list[Path] = []
    labels = np.full((len(ids), len(VOC_CLASSES)), -1, dtype=np.int8)
    for i, image_id in enumerate(ids):
        img = base / "JPEGImages" / f"{image_id}.jpg"
        if not img.is_file():
            raise FileNotFoundError(f"{img}: image listed in ImageSets/Main/{split}.txt is missing")
        xml = base / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise FileNotFoundError(f"{xml}: annotation of image {image_id} (ImageSets/Main/{split}.txt) "
                                    "is missing")
        ann = parse_annotation(xml)
        for c, diff in zip(ann.labels, ann.difficult):
            # Any non-difficult instance makes the image positive; difficult-only leaves 0.
            labels[i, c] = max(labels[i, c], 0 if diff else 1)
        paths.append(img)
    for c, name in enumerate(VOC_CLASSES):
        f = base / "ImageSets" / "Main" / f"{name}_{split}.txt"
        if not f.is_file():
            continue
        listed = _class_file_labels(f)
        for i, image_id in enumerate(ids):
            if image_id not in listed:
                raise ValueError(f"{f}: image {image_id} of ImageSets/Main/{split}.txt is not listed")
            if listed[image_id] != labels[i, c]:
                raise ValueError(f"{f}: image {image_id} is labelled {listed[image_id]} there but "
                                 f"{labels[i, c]} according to Annotations/{image_id}.xml")
    return paths, labels


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
