"""Precomputed object proposals: the selective-search boxes of the Fast R-CNN release.

The release's ``data/selective_search_data/voc_2007_{trainval,test}.mat`` (rbgirshick/fast-rcnn,
``lib/datasets/pascal_voc.py``, ``_load_selective_search_roidb``) hold two MATLAB cell arrays of one
entry per image: ``images`` (the VOC image id) and ``boxes`` (an N x 4 matrix per image, 1-based pixel
coordinates in the order y1, x1, y2, x2). Fast R-CNN reads them as ``boxes[:, (1, 0, 3, 2)] - 1``:
0-based (x1, y1, x2, y2), which is what :func:`read_proposals` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssl_bench.errors import DataError, MissingDataError

__all__ = ["read_proposals", "write_proposals", "proposal_path", "synthetic_proposals"]


def _cell_string(entry: object) -> str:
    """A MATLAB string from a loaded cell (scipy gives a 1-element array of str, or a str)."""
    arr = np.asarray(entry).ravel()
    return str(arr[0]) if arr.size else ""


def _boxes(entry: object, path: Path, image_id: str) -> np.ndarray:
    """One image's (y1, x1, y2, x2) 1-based matrix -> float32 N x 4 0-based (x1, y1, x2, y2)."""
    raw = np.asarray(entry, dtype=np.float64)
    if raw.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != 4:
        raise DataError(f"{path}: boxes of image {image_id} have shape {raw.shape}; expected N x 4 (y1 x1 y2 x2)")
    boxes = raw[:, (1, 0, 3, 2)] - 1.0
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any() or (boxes < 0).any():
        raise DataError(f"{path}: image {image_id} has a box with x2 < x1, y2 < y1 or a coordinate below 1; "
                        "expected 1-based (y1, x1, y2, x2) rows")
    return boxes.astype(np.float32)


def read_proposals(path: str | Path, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{image id: float32 N x 4 proposals (x1, y1, x2, y2), 0-based pixel coordinates} from a Fast R-CNN
    selective-search .mat file; with ``ids``, every one must be in the file (the error names the first
    missing one) and only those are returned."""
    from scipy.io import loadmat

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingDataError(f"task.proposals: {path} does not exist; expected the selective-search .mat "
                               "file of the Fast R-CNN release (e.g. voc_2007_trainval.mat)")
    try:
        data = loadmat(str(path))
    except (ValueError, OSError, NotImplementedError) as e:
        raise DataError(f"{path}: not a readable MATLAB file ({e})") from None
    if "boxes" not in data or "images" not in data:
        raise DataError(f"{path}: expected the variables 'boxes' and 'images', found "
                        f"{sorted(k for k in data if not k.startswith('__'))}")
    boxes, images = data["boxes"].ravel(), data["images"].ravel()
    if len(boxes) != len(images):
        raise DataError(f"{path}: {len(boxes)} box lists for {len(images)} images")
    names = [_cell_string(x) for x in images]
    out = {name: _boxes(b, path, name) for name, b in zip(names, boxes)}
    if ids is None:
        return out
    missing = [i for i in ids if i not in out]
    if missing:
        raise DataError(f"{path}: no proposals for image {missing[0]!r} ({len(missing)} of {len(ids)} missing)")
    return {i: out[i] for i in ids}


def proposal_path(folder: str | Path, year: str | int, split: str) -> Path:
    """The release's file name for a split: ``<folder>/voc_<year>_<split>.mat``."""
    return Path(folder).expanduser() / f"voc_{year}_{split}.mat"


def write_proposals(path: str | Path, boxes: dict[str, np.ndarray]) -> Path:
    """Write {image id: N x 4 0-based (x1, y1, x2, y2)} in the release's format (cells ``images`` and
    ``boxes``, 1-based y1 x1 y2 x2), atomically."""
    from scipy.io import savemat

    from ssl_bench.io import atomic_writer

    names = np.empty(len(boxes), dtype=object)
    cells = np.empty(len(boxes), dtype=object)
    for k, (name, b) in enumerate(boxes.items()):
        names[k] = name
        cells[k] = (np.asarray(b, dtype=np.float64).reshape(-1, 4)[:, (1, 0, 3, 2)] + 1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as f:
        savemat(f, {"images": names[:, None], "boxes": cells[:, None]})
    return path


def synthetic_proposals(gt: dict[str, tuple[np.ndarray, int, int]], seed: int = 0, jittered: int = 40,
                        random: int = 60) -> dict[str, np.ndarray]:
    """Stand-in proposals for the synthetic VOC tree (which has no selective search): per image
    ``jittered`` boxes around each ground-truth box (corners moved by up to 30% of its size, giving
    both foreground and background overlaps) and ``random`` boxes anywhere, rounded to whole pixels.

    gt: {image id: (boxes M x 4 inclusive 0-based, height, width)} -> {image id: float32 N x 4}.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, (boxes, h, w) in gt.items():
        parts = []
        for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            size = np.array([b[2] - b[0] + 1, b[3] - b[1] + 1] * 2)
            parts.append(b + rng.uniform(-0.3, 0.3, size=(jittered, 4)) * size)
        xy = rng.uniform(0, 1, size=(random, 4)) * np.array([w - 1, h - 1, w - 1, h - 1])
        parts.append(np.concatenate([np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], 1))
        p = np.round(np.concatenate(parts))
        p[:, 0::2] = p[:, 0::2].clip(0, w - 1)
        p[:, 1::2] = p[:, 1::2].clip(0, h - 1)
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2])
        out[name] = p.astype(np.float32)
    return out
