"""PASCAL VOC: annotation and classification-label reader, and a synthetic VOC-format tree writer.

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

Synthetic tree
--------------
``write_synthetic_voc`` writes a small data set in the real VOC format (JPEGs, XML, image sets,
palette segmentation PNGs with the void band), so that every VOC code path -- the SVM protocol,
classification fine-tuning, segmentation -- can run end to end without the 900 MB download.  The
objects reuse the embedded synthetic set's renderer (``ssl_bench.data.synthetic``): VOC class c is
drawn as that module's class c -- a fixed shape family and luminance texture with two class-specific
hue modes -- on the same position-dependent sky/ground background.  Every image has a "main"
object whose class cycles through the 20 classes (so each split has positives of every class)
plus 0-3 other objects of random classes; small or heavily occluded objects are marked difficult.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ssl_bench.data import synthetic as _syn
from ssl_bench.data.images import ImageDataset

__all__ = ["VOC_CLASSES", "VOCAnnotation", "parse_annotation", "voc_root", "read_classification",
           "read_image_set", "write_synthetic_voc", "VOCClassification", "collate_voc", "voc_colormap"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor")
_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}
_LAYOUT = "VOCdevkit/VOC{year}/{{JPEGImages,Annotations,ImageSets/Main}}"

# Bump when the synthetic tree's content changes for the same arguments (recorded in the manifest).
SYNTHETIC_VOC_VERSION = 1
_GENERATOR_ID = "ssl_bench.data.voc.write_synthetic_voc"
_MANIFEST = "ssl_bench_manifest.json"


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


# ------------------------------------------------------------------------------------ writing

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


@dataclass
class _Instance:
    cls: int
    visible: np.ndarray        # bool n x n: pixels this instance owns (top-most, coverage >= 0.5)
    truncated: bool
    difficult: bool


# Difficult = small or heavily occluded, measured on the visible pixels; the thresholds give ~9%
# of all objects (measured on the defaults; see tests/test_voc.py).
_DIFFICULT_MIN_SIDE = 0.13        # visible box side below this fraction of the image
_DIFFICULT_MIN_VISIBLE = 0.4      # or less than this fraction of it visible (hidden / off-image)


def _render_voc_image(seed: int, image_index: int, main_cls: int, n: int
                      ) -> tuple[np.ndarray, list[_Instance]]:
    """One image: (uint8 n x n x 3 RGB, instances in annotation order, main object first)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0C07, int(image_index)]))
    s = n / 64.0
    canvas = _syn._background(rng, n, s)
    r_main = rng.uniform(0.16, 0.3) * n
    m = 0.7 * r_main
    objects = [(main_cls, _syn._make_object(rng, n, main_cls, r_main, rng.uniform(m, n - m),
                                            rng.uniform(m, n - m)))]
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.35, 0.3, 0.2, 0.15]))):
        cls = int(rng.integers(len(VOC_CLASSES)))
        r = rng.uniform(0.05, 0.24) * n
        objects.append((cls, _syn._make_object(rng, n, cls, r, rng.uniform(0, n), rng.uniform(0, n))))
    # Random painting order: objects hide parts of each other.  The main object is the image's
    # guaranteed clear positive, so it must stay >= 55% visible (else it goes on top).
    depth = rng.permutation(len(objects))
    alphas = [_syn._rasterise(obj, n) for _, obj in objects]
    owner = np.full((n, n), -1, dtype=np.int64)
    for k in depth:
        owner[alphas[k] >= 0.5] = k
    main_full = float((alphas[0] >= 0.5).sum())
    if (owner == 0).sum() < 0.55 * main_full:
        # Too hidden for the image's guaranteed positive: move the main object to the top.
        depth = np.concatenate([depth[depth != 0], [0]])
        owner = np.full((n, n), -1, dtype=np.int64)
        for k in depth:
            owner[alphas[k] >= 0.5] = k
    for k in depth:
        _syn._paint(objects[k][1], _syn._object_rng(objects[k][1]), canvas, alphas[k], s)
    canvas[..., 0] += rng.normal(0.0, 0.8, size=(n, n))
    image = _syn._lab_to_srgb_uint8(canvas)

    instances: list[_Instance] = []
    for k, (cls, obj) in enumerate(objects):
        vis = owner == k
        if not vis.any():
            continue  # entirely hidden: not annotated, as in VOC
        ys, xs = np.nonzero(vis)
        side = min(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / n
        full = math.pi * obj.radius ** 2  # shapes are normalised to the area of their disc
        outside = any(((p < 0) | (p > n)).any() for p, _ in obj.polys)
        difficult = k > 0 and (side < _DIFFICULT_MIN_SIDE or vis.sum() < _DIFFICULT_MIN_VISIBLE * full)
        instances.append(_Instance(cls, vis, bool(outside), bool(difficult)))
    return image, instances


def _shift_any(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation with a (2r+1) x (2r+1) square."""
    out = mask.copy()
    p = np.pad(mask, r)
    n0, n1 = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= p[r + dy:r + dy + n0, r + dx:r + dx + n1]
    return out


def _void_band(inst_map: np.ndarray) -> np.ndarray:
    """VOC's void (255) boundary band around every object outline: 1 px outside the object and
    2 px inside it, so ~3 px against the background (4 px between two touching objects)."""
    band = np.zeros(inst_map.shape, dtype=bool)
    for k in np.unique(inst_map):
        if k == 0:
            continue
        mask = inst_map == k
        band |= _shift_any(mask, 1) & ~mask       # 1 px outside
        band |= _shift_any(~mask, 2) & mask        # 2 px inside
    return band


def _annotation_xml(folder: str, image_id: str, n: int, instances: list[_Instance]) -> str:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    src = ET.SubElement(ann, "source")
    ET.SubElement(src, "database").text = "ssl_bench synthetic VOC"
    ET.SubElement(src, "annotation").text = "ssl_bench"
    ET.SubElement(src, "image").text = "synthetic"
    size = ET.SubElement(ann, "size")
    ET.SubElement(size, "width").text = str(n)
    ET.SubElement(size, "height").text = str(n)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "1"
    for inst in instances:
        ys, xs = np.nonzero(inst.visible)
        o = ET.SubElement(ann, "object")
        ET.SubElement(o, "name").text = VOC_CLASSES[inst.cls]
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = str(int(inst.truncated))
        ET.SubElement(o, "difficult").text = str(int(inst.difficult))
        bb = ET.SubElement(o, "bndbox")
        # VOC boxes are 1-based and inclusive and enclose the visible part of the object.
        for tag, v in (("xmin", xs.min()), ("ymin", ys.min()), ("xmax", xs.max()), ("ymax", ys.max())):
            ET.SubElement(bb, tag).text = str(int(v) + 1)
    ET.indent(ann, space="\t")
    return ET.tostring(ann, encoding="unicode") + "\n"


def _save_palette_png(arr: np.ndarray, path: Path, palette: bytes) -> None:
    a = np.ascontiguousarray(arr, dtype=np.uint8)
    im = Image.frombytes("P", (a.shape[1], a.shape[0]), a.tobytes())
    im.putpalette(palette)
    im.save(path, format="PNG")


def _synthetic_manifest(num_trainval: int, num_test: int, image_size: int, seed: int,
                        year: str) -> dict[str, Any]:
    # The objects come from the synthetic module's renderer: its version is part of ours.
    return {"generator": _GENERATOR_ID, "version": SYNTHETIC_VOC_VERSION,
            "renderer_version": _syn.GENERATOR_VERSION,
            "spec": {"num_trainval": num_trainval, "num_test": num_test, "image_size": image_size,
                     "seed": seed, "year": year},
            "classes": list(VOC_CLASSES)}


def _existing_matches(dest: Path, manifest: dict[str, Any]) -> bool | None:
    """None if dest is absent, True if it holds this exact synthetic tree, False otherwise."""
    if not (dest.exists() or dest.is_symlink()):
        return None
    try:
        return json.loads((dest / _MANIFEST).read_text()) == manifest
    except (OSError, ValueError):
        return False


def write_synthetic_voc(out: str | Path, num_trainval: int = 200, num_test: int = 200,
                        image_size: int = 128, seed: int = 0, year: str | int = "2007",
                        *, overwrite: bool = False) -> Path:
    """Write a deterministic synthetic PASCAL VOC tree to ``out/VOCdevkit/VOC<year>`` and return
    that ``VOC<year>`` folder.

    Contents: JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/{train,val,trainval,test}.txt
    and <class>_<split>.txt, ImageSets/Segmentation/{train,val,trainval,test}.txt,
    SegmentationClass/<id>.png (palette PNG: 0 background, 1..20 = class index + 1, 255 = void band)
    and SegmentationObject/<id>.png (instance 1..K in annotation order, 0, 255), and
    ``ssl_bench_manifest.json``.  trainval is split in half into train and val; every image is
    segmented.  Ids (6 digits from 000001) interleave the splits, as in VOC2007.

    The tree is rendered into a temporary sibling folder and moved into place with ``os.replace``,
    so a crash never leaves a partial ``VOC<year>``.  If the destination already holds the tree for
    the same arguments it is returned untouched; anything else raises FileExistsError unless
    ``overwrite=True``.  Other years under the same VOCdevkit are left alone.
    """
    for name, v, lo in (("num_trainval", num_trainval, 2), ("num_test", num_test, 1),
                        ("image_size", image_size, 32), ("seed", seed, 0)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    year = str(year)
    num_trainval, num_test, n, seed = int(num_trainval), int(num_test), int(image_size), int(seed)
    devkit = Path(out).expanduser() / "VOCdevkit"
    dest = devkit / f"VOC{year}"
    manifest = _synthetic_manifest(num_trainval, num_test, n, seed, year)
    state = _existing_matches(dest, manifest)
    if state:
        return dest
    if state is False and not overwrite:
        raise FileExistsError(f"{dest} exists and is not the synthetic VOC tree for these arguments "
                              f"({_MANIFEST} differs or is missing); pass overwrite=True to replace it")

    devkit.mkdir(parents=True, exist_ok=True)
    tmp = devkit / f".VOC{year}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crashed run of a process with our pid
    try:
        _write_tree(tmp, manifest, num_trainval, num_test, n, seed, year)
        if dest.exists() or dest.is_symlink():
            if _existing_matches(dest, manifest):  # a concurrent writer finished first
                shutil.rmtree(tmp)
                return dest
            old = devkit / f".VOC{year}.old-{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write_tree(root: Path, manifest: dict[str, Any], num_trainval: int, num_test: int, n: int,
                seed: int, year: str) -> None:
    for d in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation",
              "SegmentationClass", "SegmentationObject"):
        (root / d).mkdir(parents=True)
    num_train = num_trainval // 2
    # (split, position in split); the main object's class cycles with the position, so every split
    # holds each class as a non-difficult positive once it has >= 20 images.
    slots = ([("train", j) for j in range(num_train)] + [("val", j) for j in range(num_trainval - num_train)]
             + [("test", j) for j in range(num_test)])
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x0C07])).permutation(len(slots))
    palette = voc_colormap().tobytes()
    members: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    image_labels: dict[str, np.ndarray] = {}
    for rank, k in enumerate(order):
        split, j = slots[k]
        image_id = f"{rank + 1:06d}"
        image, instances = _render_voc_image(seed, rank, j % len(VOC_CLASSES), n)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", format="JPEG",
                                    quality=90, subsampling=2)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            _annotation_xml(f"VOC{year}", image_id, n, instances))
        inst_map = np.zeros((n, n), dtype=np.int64)
        cls_map = np.zeros((n, n), dtype=np.uint8)
        for i, inst in enumerate(instances):
            inst_map[inst.visible] = i + 1
            cls_map[inst.visible] = inst.cls + 1
        void = _void_band(inst_map)
        obj_map = inst_map.astype(np.uint8)
        cls_map[void] = 255
        obj_map[void] = 255
        _save_palette_png(cls_map, root / "SegmentationClass" / f"{image_id}.png", palette)
        _save_palette_png(obj_map, root / "SegmentationObject" / f"{image_id}.png", palette)
        lab = np.full(len(VOC_CLASSES), -1, dtype=np.int8)
        for inst in instances:
            lab[inst.cls] = max(lab[inst.cls], 0 if inst.difficult else 1)
        image_labels[image_id] = lab
        members[split].append(image_id)
    sets = {"train": sorted(members["train"]), "val": sorted(members["val"]),
            "trainval": sorted(members["train"] + members["val"]), "test": sorted(members["test"])}
    for split, ids in sets.items():
        listing = "".join(f"{i}\n" for i in ids)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(listing)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(listing)
        for c, name in enumerate(VOC_CLASSES):
            # The devkit's format: id, space, label right-aligned in two characters.
            (root / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text(
                "".join(f"{i} {int(image_labels[i][c]):2d}\n" for i in ids))
    # The manifest is written last: its presence marks a complete tree.
    (root / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
