"""STL-10 from its binary files (``stl10_binary/``).

``train_X.bin`` (5000 images), ``test_X.bin`` (8000) and ``unlabeled_X.bin`` (100000) hold raw
uint8 images of 3 x 96 x 96 with no header. Each colour plane is stored column by column (the
MATLAB order the data set was made in), so a plane read row-major comes out transposed.
``train_y.bin`` / ``test_y.bin`` hold one uint8 label per image, 1..10; ``class_names.txt`` names
the classes, one per line. The image files are memory-mapped, not read into memory (the unlabelled
part alone is 2.8 GB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ssl_bench.data.decoded_arrays import ArrayDataModule, ArrayPart, ArraySplits, extracted_folder
from ssl_bench.data.images import DataLayoutError
from ssl_bench.errors import ConfigError, DataError

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
FOLDER = "stl10_binary"
TRAIN_SPLITS = ("train", "unlabeled", "train+unlabeled")


class BinaryImages:
    """The images of one ``*_X.bin`` file, memory-mapped on first use in each process (loader
    workers open their own map instead of receiving a copy): ``images[i]`` = uint8 3 x 96 x 96."""

    def __init__(self, path: Path) -> None:
        size = path.stat().st_size
        if size == 0 or size % IMAGE_BYTES:
            raise DataError(f"{path}: {size} bytes is not a whole number of STL-10 images "
                            f"(3 x {SIDE} x {SIDE} uint8 = {IMAGE_BYTES} bytes each)")
        self.path, self.count = path, size // IMAGE_BYTES
        self._map: np.ndarray | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, np.uint8, "r", shape=(self.count, 3, SIDE, SIDE))
        return self._map[index].transpose(0, 2, 1)  # planes stored column-major: (C, W, H) -> (C, H, W)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_map": None}


def read_labels(path: Path, count: int, num_classes: int) -> np.ndarray:
    """``*_y.bin``: one uint8 label 1..num_classes per image -> int64 labels 0..num_classes-1."""
    labels = np.fromfile(path, np.uint8).astype(np.int64)
    if labels.size != count:
        raise DataError(f"{path}: {labels.size} labels for {count} images in the matching _X.bin file")
    if labels.size and (labels.min() < 1 or labels.max() > num_classes):
        raise DataError(f"{path}: labels in [{labels.min()}, {labels.max()}]; expected 1..{num_classes} "
                        "(class_names.txt names that many classes)")
    return labels - 1


class STL10DataModule(ArrayDataModule):
    """STL-10 (config ``data=stl10``). Val = the test split (8000 labelled images).

    Args:
        train_split: "train" (the 5000 labelled images: probes, supervised pretraining),
            "unlabeled" (the 100000 unlabelled ones) or "train+unlabeled" (both, for pretraining). A
            split with unlabelled images has no classes (``num_classes`` = 0).
        Other arguments as `ArrayDataModule` / `ImageDataModule`.
    """

    def __init__(self, root: str, train_split: str = "train", **kwargs: Any) -> None:
        if train_split not in TRAIN_SPLITS:
            raise ConfigError(f"data.train_split: expected one of {list(TRAIN_SPLITS)}, got {train_split!r}")
        super().__init__(root, **kwargs)
        self.train_split = train_split

    @property
    def train_parts(self) -> list[str]:
        """The files' stems the train split reads: "train", "unlabeled" or both."""
        return self.train_split.split("+")

    def expected_files(self) -> list[str]:
        names = ["class_names.txt", "test_X.bin", "test_y.bin"]
        if "train" in self.train_parts:
            names += ["train_X.bin", "train_y.bin"]
        if "unlabeled" in self.train_parts:
            names += ["unlabeled_X.bin"]
        return names

    def read(self) -> ArraySplits:
        base = extracted_folder(self.root, FOLDER, "test_X.bin")
        names = self.expected_files()
        missing = [n for n in names if not (base / n).is_file()]
        if missing:
            raise DataLayoutError(f"data.root={self.root}: missing {', '.join(str(base / m) for m in missing)}; "
                                  f"expected the STL-10 binary files {base}/{{{', '.join(names)}}} "
                                  f"(data.train_split={self.train_split})")
        classes = [line.strip() for line in (base / "class_names.txt").read_text().splitlines() if line.strip()]
        if len(classes) < 2:
            raise DataError(f"{base / 'class_names.txt'}: {len(classes)} class name(s); expected one per line")

        def labelled(stem: str) -> ArrayPart:
            images = BinaryImages(base / f"{stem}_X.bin")
            return ArrayPart(images, read_labels(base / f"{stem}_y.bin", len(images), len(classes)), images.path)

        train = [labelled("train")] if "train" in self.train_parts else []
        if "unlabeled" in self.train_parts:
            images = BinaryImages(base / "unlabeled_X.bin")
            train.append(ArrayPart(images, np.full(len(images), -1, np.int64), images.path))
        return ArraySplits(train, [labelled("test")], classes, [base / n for n in names])
