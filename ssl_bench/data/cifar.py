"""CIFAR-10 and CIFAR-100 from the "python version" of the data sets (pickled batches).

CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``; each batch is a
dict with ``b"data"`` (uint8 N x 3072: the red plane, then green, then blue, each 32 x 32 row-major),
``b"labels"`` (N ints) and ``b"batch_label"``; the meta file has ``b"label_names"``.
CIFAR-100: ``cifar-100-python/{train, test, meta}`` with ``b"fine_labels"`` / ``b"coarse_labels"``
and meta ``b"fine_label_names"`` / ``b"coarse_label_names"``. The batches were pickled by Python 2,
hence the bytes keys. Train = the training batches, val = the test batch.

The pickles are read with an unpickler that builds nothing but numpy arrays and plain containers:
a pickle can run any code when loaded, and these files usually come from a download.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ssl_bench.data.decoded_arrays import ArrayDataModule, ArrayPart, ArraySplits, extracted_folder
from ssl_bench.data.images import DataLayoutError
from ssl_bench.errors import ConfigError, DataError

SIDE = 32
# variant -> (folder, train files, test file, meta file, label key, label-names key)
LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "{labels}_labels", "{labels}_label_names"),
}
# what numpy arrays pickle into (numpy 1 and 2 module names; protocol 2 encodes bytes with _codecs,
# protocol 5 rebuilds arrays with _frombuffer)
SAFE_GLOBALS = {(f"numpy.{core}.{module}", name) for core in ("core", "_core")
                for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                     ("numeric", "_frombuffer"))} | {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, and refuses every other callable."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")
        return super().find_class(module, name)


def load_batch(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with str keys (the files have Python 2's bytes keys)."""
    if not path.is_file():
        raise DataLayoutError(f"missing CIFAR file {path}")
    try:
        with open(path, "rb") as f:
            content = _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path} is not a CIFAR python batch (a pickled dict of numpy arrays): {e}") from e
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}


def _field(batch: dict[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        raise DataError(f"{path}: no {key!r} entry (has {sorted(batch)}); expected a CIFAR python batch")
    return batch[key]


def read_part(path: Path, label_key: str, num_classes: int) -> ArrayPart:
    """One batch file: images N x 3 x 32 x 32 (uint8) and labels, checked against the class count."""
    batch = load_batch(path)
    data = np.asarray(_field(batch, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}; expected uint8 N x {3 * SIDE * SIDE}")
    labels = np.asarray(_field(batch, label_key, path), dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: {label_key!r} holds labels in [{labels.min()}, {labels.max()}]; "
                        f"expected 0..{num_classes - 1} (the meta file names {num_classes} classes)")
    return ArrayPart(data.reshape(-1, 3, SIDE, SIDE), labels, path)


class CifarDataModule(ArrayDataModule):
    """CIFAR-10 / CIFAR-100 (config ``data=cifar10`` / ``data=cifar100``).

    Args:
        variant: "cifar10" or "cifar100".
        labels: CIFAR-100's label set, "fine" (100 classes) or "coarse" (20 super-classes); CIFAR-10
            has one.
        Other arguments as `ArrayDataModule` / `ImageDataModule`.
    """

    def __init__(self, root: str, variant: str = "cifar10", labels: str = "fine", **kwargs: Any) -> None:
        if variant not in LAYOUTS:
            raise ConfigError(f"data.variant: expected one of {sorted(LAYOUTS)}, got {variant!r}")
        if labels not in ("fine", "coarse"):
            raise ConfigError(f"data.labels: expected 'fine' or 'coarse', got {labels!r}")
        super().__init__(root, **kwargs)
        self.variant, self.label_set = variant, labels

    def read(self) -> ArraySplits:
        folder, train_files, test_file, meta_file, label_key, names_key = LAYOUTS[self.variant]
        base = extracted_folder(self.root, folder, meta_file)
        expected = [*train_files, test_file, meta_file]
        missing = [name for name in expected if not (base / name).is_file()]
        if missing:
            raise DataLayoutError(f"data.root={self.root}: missing {', '.join(str(base / m) for m in missing)}; "
                                  f"expected the {self.variant} python version: {base}/{{{', '.join(expected)}}}")
        meta_path = base / meta_file
        names_key = names_key.format(labels=self.label_set)
        classes = [n.decode() if isinstance(n, bytes) else str(n)
                   for n in _field(load_batch(meta_path), names_key, meta_path)]
        label_key = label_key.format(labels=self.label_set)
        train = [read_part(base / f, label_key, len(classes)) for f in train_files]
        val = [read_part(base / test_file, label_key, len(classes))]
        return ArraySplits(train, val, classes, [base / f for f in expected])
