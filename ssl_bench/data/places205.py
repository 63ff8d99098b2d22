"""Places205 (Zhou et al. 2014) from its image folders and train/val list files.

The archive extracts to ``data/vision/torralba/deeplearning/images256/<letter>/<class>/*.jpg`` (some
classes have a sub-folder: ``<letter>/<class>/<kind>/``) and ``trainvalsplit_places205/
{train,val}_places205.csv``, whose lines are "<path relative to images256> <label>" separated by a
space (e.g. ``a/abbey/gsun_0003586c3eedd97457b2d729ebfe18b5.jpg 0``), labels 0..204. The class of a
label is the folder path between the letter and the file name. Undecodable images are skipped and
counted like in every other image set (``data.max_skipped_fraction``); a listed file that does not
exist is an error naming it.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from ssl_bench.data.datamodule import ImageDataModule
from ssl_bench.data.images import DataLayoutError
from ssl_bench.errors import DataError

LISTS = "trainvalsplit_places205"
LIST_FILES = {"train": "train_places205.csv", "val": "val_places205.csv"}
IMAGE_DIRS = ("data/vision/torralba/deeplearning/images256", "images256")  # as extracted; moved up
NAMED = 10  # missing files named in the error (the rest are counted)


def read_list(path: Path) -> list[tuple[str, int]]:
    """(relative image path, label) of every line of a Places205 list file."""
    if not path.is_file():
        raise DataLayoutError(f"missing Places205 list file {path}; expected lines '<letter>/<class>/<image>.jpg "
                              "<label>'")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit() or len(PurePosixPath(fields[0]).parts) < 3:
            raise DataError(f"{path}:{number}: expected '<letter>/<class>/<image>.jpg <label>', got {line.strip()!r}")
        entries.append((fields[0], int(fields[1])))
    if not entries:
        raise DataError(f"{path} lists no images")
    return entries


def class_names(entries: list[tuple[str, int]], path: Path) -> list[str]:
    """Class name per label (the folders between the letter and the file); labels must be 0..K-1,
    each with one folder."""
    names: dict[int, str] = {}
    for rel, label in entries:
        name = "/".join(PurePosixPath(rel).parts[1:-1])
        if names.setdefault(label, name) != name:
            raise DataError(f"{path}: label {label} is given to images of {names[label]!r} and of {name!r}; "
                            "expected one class folder per label")
    if sorted(names) != list(range(len(names))):
        gaps = sorted(set(range(max(names) + 1)) - set(names))[:NAMED]
        raise DataError(f"{path}: labels are not 0..{max(names)} without gaps (no image of label(s) {gaps})")
    return [names[i] for i in range(len(names))]


def check_files(image_dir: Path, entries: list[tuple[str, int]], list_path: Path) -> None:
    """Every listed image exists (one directory listing per folder, not one stat per file)."""
    by_folder: dict[str, list[str]] = defaultdict(list)
    for rel, _ in entries:
        folder, _, name = rel.rpartition("/")
        by_folder[folder].append(name)
    missing: list[str] = []
    for folder, names in by_folder.items():
        try:
            present = set(os.listdir(image_dir / folder))
        except FileNotFoundError:
            present = set()
        except OSError as e:
            raise DataLayoutError(f"data.root: cannot list {image_dir / folder}: {e.strerror or e}") from e
        missing += [f"{folder}/{n}" for n in names if n not in present]
    if missing:
        more = f" and {len(missing) - NAMED} more" if len(missing) > NAMED else ""
        raise DataLayoutError(f"{list_path} lists {len(missing)} image(s) missing under {image_dir}: "
                              f"{', '.join(str(image_dir / m) for m in missing[:NAMED])}{more}")


class Places205DataModule(ImageDataModule):
    """Places205 (config ``data=places205``): the official train/val lists over the image folders.

    ``data.root`` holds ``trainvalsplit_places205/`` and the images256 folder, either where the archive
    puts it (ROOT/data/vision/torralba/deeplearning/images256) or moved up to ROOT/images256 (a
    symbolic link works too). Arguments as `ImageDataModule` (``layout`` is fixed by the list files).
    """

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(root, layout="imagefolder", **kwargs)

    def find_image_dir(self) -> Path:
        for candidate in IMAGE_DIRS:
            if (self.root / candidate).is_dir():
                return self.root / candidate
        raise DataLayoutError(f"data.root={self.root}: no Places205 image folder; expected "
                              f"{' or '.join(str(self.root / c) for c in IMAGE_DIRS)} (<letter>/<class>/*.jpg)")

    def find_samples(self) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
        if not self.root.is_dir():
            raise DataLayoutError(f"data.root={self.root} does not exist; expected ROOT/{LISTS}/"
                                  f"{{{', '.join(LIST_FILES.values())}}} and the images256 folder")
        lists = {split: self.root / LISTS / name for split, name in LIST_FILES.items()}
        entries = {split: read_list(path) for split, path in lists.items()}
        classes = class_names(entries["train"], lists["train"])
        bad = sorted({y for _, y in entries["val"] if y >= len(classes)})
        if bad:
            raise DataError(f"{lists['val']}: label(s) {bad[:NAMED]} beyond the {len(classes)} classes of "
                            f"{lists['train']}")
        image_dir = self.find_image_dir()
        for split in LIST_FILES:
            check_files(image_dir, entries[split], lists[split])
        train, val = ([(image_dir / rel, y) for rel, y in entries[s]] for s in LIST_FILES)
        return train, val, classes
