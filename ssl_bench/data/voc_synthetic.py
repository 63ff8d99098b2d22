"""A synthetic data set in the real PASCAL VOC format, and the VOC root a task reads.

``write_synthetic_voc`` writes a small data set in the real VOC format (JPEGs, XML, image sets,
palette segmentation PNGs with the void band), so that every VOC code path -- the SVM protocol,
classification fine-tuning, detection, segmentation -- can run end to end without the 900 MB download.  The
objects reuse the embedded synthetic set's renderer (``ssl_bench.data.synthetic``): VOC class c is
drawn as that module's class c -- a fixed shape family and luminance texture with two class-specific
hue modes -- on the same position-dependent sky/ground background.  Every image has a "main"
object whose class cycles through the 20 classes (so each split has positives of every class)
plus 0-3 other objects of random classes; small or heavily occluded objects are marked difficult.
The files are read back by the real reader (:mod:`ssl_bench.data.voc`), as a VOCdevkit would be.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ssl_bench.data import synthetic as _syn
from ssl_bench.data.voc import VOC_CLASSES, voc_colormap, voc_root
from ssl_bench.errors import ConfigError, MissingDataError, OutputExistsError

# Bump when the synthetic tree's content changes for the same arguments (recorded in the manifest).
SYNTHETIC_VOC_VERSION = 1
# a stable identifier recorded in manifests (not an import path)
_GENERATOR_ID = "ssl_bench.data.voc.write_synthetic_voc"
_MANIFEST = "ssl_bench_manifest.json"


def resolve_voc(root: str | Path, year: str | int, data_dir: str | Path, synthetic: Any, key: str) -> Path:
    """The VOC<year> folder a task reads: ``root`` is a VOCdevkit folder (or its parent, or
    VOC<year>), or ``"synthetic"`` for the generated tree (written once under ``data_dir`` from the
    ``synthetic`` settings: num_trainval, num_test, image_size, seed). ``key`` names the config key
    in errors."""
    if str(root) == "synthetic":
        s = synthetic
        out = Path(data_dir) / f"voc_synthetic_n{s.num_trainval}_{s.num_test}_px{s.image_size}_seed{s.seed}"
        return write_synthetic_voc(out, s.num_trainval, s.num_test, s.image_size, s.seed, year=str(year))
    try:
        return voc_root(root, str(year))
    except FileNotFoundError as e:
        raise MissingDataError(f"{key}: {e}") from e


@dataclass
class _Instance:
    cls: int
    visible: np.ndarray        # bool n x n: pixels this instance owns (top-most, coverage >= 0.5)
    truncated: bool
    difficult: bool


# Difficult = small or heavily occluded, measured on the visible pixels; the thresholds give ~9%
# of all objects (measured on the defaults; see tests/data/test_voc.py).
_DIFFICULT_MIN_SIDE = 0.13        # visible box side below this fraction of the image
_DIFFICULT_MIN_VISIBLE = 0.4      # or less than this fraction of it visible (hidden / off-image)


def _render_voc_image(seed: int, image_index: int, main_cls: int, n: int
                      ) -> tuple[np.ndarray, list[_Instance]]:
    """One image: (uint8 n x n x 3 RGB, instances in annotation order, main object first)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0C07, int(image_index)]))
    s = n / 64.0
    r_main = rng.uniform(0.16, 0.3) * n
    m = 0.7 * r_main
    objects = [(main_cls, _syn._make_object(rng, n, main_cls, r_main, rng.uniform(m, n - m),
                                            rng.uniform(m, n - m)))]
    # the ground's lightness keeps its distance from the main object's, as in the classification set
    canvas = _syn._background(rng, n, s, objects[0][1].L_base)
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
            raise ConfigError(f"{name}: expected an integer >= {lo}, got {v!r}")
    year = str(year)
    num_trainval, num_test, n, seed = int(num_trainval), int(num_test), int(image_size), int(seed)
    devkit = Path(out).expanduser() / "VOCdevkit"
    dest = devkit / f"VOC{year}"
    manifest = _synthetic_manifest(num_trainval, num_test, n, seed, year)
    state = _existing_matches(dest, manifest)
    if state:
        return dest
    if state is False and not overwrite:
        raise OutputExistsError(f"{dest} exists and is not the synthetic VOC tree for these arguments "
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
