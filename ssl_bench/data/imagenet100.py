"""ImageNet-100: the ILSVRC-2012 class folders of a fixed 100-class list (CMC, solo-learn).

Reads the ImageNet layout (ROOT/train/<wnid>/*.JPEG, ROOT/val/<wnid>/*.JPEG) and keeps only the
listed classes; other class folders are ignored. Labels follow the sorted WordNet ids, as torchvision's
ImageFolder gives them on a tree holding only those 100 folders. The list ships with the package
(``imagenet100_classes.txt``); ``data.classes_file`` points to another list of WordNet ids.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ssl_bench.data.datamodule import ImageDataModule
from ssl_bench.data.images import IMG_EXTENSIONS, DataLayoutError, list_images
from ssl_bench.errors import DataError

CLASSES_FILE = Path(__file__).with_name("imagenet100_classes.txt")
MISSING_NAMED = 10  # missing class folders named in the error (the rest are counted)


def read_class_list(path: Path, key: str) -> list[str]:
    """The class folder names of a list file: one per line; blank lines and '#' comments skipped."""
    if not path.is_file():
        raise DataLayoutError(f"{key}={path} does not exist; expected a text file of class folder names, one a line")
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates or not names:
        raise DataError(f"{key}={path}: expected distinct class names, one a line; "
                        + (f"repeated: {', '.join(duplicates)}" if duplicates else "found none"))
    return names


def listed_class_samples(split_dir: Path, classes: list[str], key: str) -> list[tuple[Path, int]]:
    """(path, label) of every image in the folders ``split_dir/<class>`` of ``classes`` (label = index
    in ``classes``). Missing or empty class folders are an error naming them."""
    if not split_dir.is_dir():
        raise DataLayoutError(f"{key}={split_dir} does not exist; expected {split_dir}/<wnid>/*.JPEG")
    missing = [c for c in classes if not (split_dir / c).is_dir()]
    if missing:
        more = f" and {len(missing) - MISSING_NAMED} more" if len(missing) > MISSING_NAMED else ""
        raise DataLayoutError(f"{key}={split_dir}: {len(missing)} of the {len(classes)} listed class folders are "
                              f"missing: {', '.join(str(split_dir / c) for c in missing[:MISSING_NAMED])}{more}")
    samples: list[tuple[Path, int]] = []
    for label, c in enumerate(classes):
        images = list_images(split_dir / c, key)
        if not images:
            raise DataLayoutError(f"{key}={split_dir}: class folder {split_dir / c} holds no images "
                                  f"(extensions {', '.join(IMG_EXTENSIONS)})")
        samples += [(p, label) for p in images]
    return samples


class ImageNet100DataModule(ImageDataModule):
    """ImageNet-100 (config ``data=imagenet100``): the ImageNet layout filtered by a class list.

    Args:
        classes_file: the list of class folders (WordNet ids); None = the packaged ImageNet-100 list.
        Other arguments as `ImageDataModule` (``layout`` is fixed: ImageNet's train/ and val/ folders).
    """

    def __init__(self, root: str, classes_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(root, layout="imagefolder", **kwargs)
        self.classes_file = Path(classes_file).expanduser() if classes_file else CLASSES_FILE

    def find_samples(self) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
        classes = sorted(read_class_list(self.classes_file, "data.classes_file"))
        if not self.root.is_dir():
            raise DataLayoutError(f"data.root={self.root} does not exist; expected ROOT/train/<wnid>/*.JPEG and "
                                  f"ROOT/val/<wnid>/*.JPEG for the {len(classes)} classes of {self.classes_file}")
        train = listed_class_samples(self.root / "train", classes, "data.root (train/)")
        val = listed_class_samples(self.root / "val", classes, "data.root (val/)")
        return train, val, classes
