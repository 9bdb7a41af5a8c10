"""Datasets: MNIST from the four standard IDX files, with the paper's 48k / 12k / 10k split.

Every reader checks magic numbers, shapes and counts and fails with one line naming the file and what was expected.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_FEATURES = 28 * 28  # inputs of a network trained on MNIST (pixels / 255)
MNIST_CLASSES = 10
SPLIT_SEED = 20250922  # fixed: every run, whatever its own seed, validates on the same 12k training images
N_VALIDATION = 12_000
MAX_IDX_BYTES = 64 * 2**20  # an uncompressed IDX file; MNIST's largest is 47,040,016 bytes


@dataclass(frozen=True)
class Split:
    """Inputs scaled to the DAC range [0, 1] (pixel / 255) as float64 rows, labels as int64."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class MNIST:
    train: Split
    validation: Split
    test: Split
    source: str


def _open_idx(directory: Path, stem: str) -> tuple[Path, bytes]:
    for name in (stem + ".gz", stem):
        path = directory / name
        if path.is_file():
            try:
                if name.endswith(".gz"):
                    with gzip.open(path, "rb") as f:
                        data = f.read(MAX_IDX_BYTES + 1)
                else:
                    with open(path, "rb") as f:
                        data = f.read(MAX_IDX_BYTES + 1)
            except (OSError, EOFError, zlib.error) as exc:
                what = "corrupt gzip data" if name.endswith(".gz") else "cannot read"
                raise InputError(path, f"{what} ({exc}): damaged, re-download it") from None
            if len(data) > MAX_IDX_BYTES:
                raise InputError(path, f"more than {MAX_IDX_BYTES:,} bytes of IDX data (MNIST's largest file has "
                                 "47,040,016): not an MNIST file")
            return path, data
    raise InputError(directory / (stem + ".gz"), "missing: expected the standard MNIST IDX file (gzipped or not) "
                     "in --data-dir")


def _read_idx(directory: Path, stem: str, magic: int, item_shape: tuple[int, ...]) -> tuple[Path, np.ndarray]:
    path, data = _open_idx(directory, stem)
    dims = len(item_shape) + 1
    header = 4 + 4 * dims
    if len(data) < header:
        raise InputError(path, f"truncated: {len(data)} bytes, the IDX header alone needs {header} (damaged, "
                         "re-download it)")
    found = struct.unpack(">I", data[:4])[0]
    if found != magic:
        raise InputError(path, f"wrong magic number {found}, expected {magic} (not an MNIST "
                         f"{'image' if magic == 2051 else 'label'} file)")
    shape = struct.unpack(">" + "I" * dims, data[4:header])
    if tuple(shape[1:]) != item_shape:
        raise InputError(path, f"items of shape {tuple(shape[1:])}, expected {item_shape}")
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise InputError(path, f"{len(data)} bytes, expected {expected} for {shape[0]} items (truncated or padded): "
                         "damaged, re-download it")
    return path, np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist(data_dir: str | Path, max_train_samples: int | None = None) -> MNIST:
    """Load MNIST from a directory with the four IDX files; split 60k training images into 48k train / 12k
    validation with a fixed seed; scale pixels to [0, 1]. max_train_samples keeps the first K of the 48k (for
    quick runs); validation and test stay whole."""
    directory = Path(data_dir)
    if not directory.is_dir():
        raise InputError(directory, "not a directory: --data-dir must hold the four MNIST IDX files")
    images_path, images = _read_idx(directory, MNIST_FILES["train_images"], 2051, (28, 28))
    labels_path, labels = _read_idx(directory, MNIST_FILES["train_labels"], 2049, ())
    _, test_images = _read_idx(directory, MNIST_FILES["test_images"], 2051, (28, 28))
    test_labels_path, test_labels = _read_idx(directory, MNIST_FILES["test_labels"], 2049, ())
    for img, lab, path in ((images, labels, labels_path), (test_images, test_labels, test_labels_path)):
        if img.shape[0] != lab.shape[0]:
            raise InputError(path, f"{lab.shape[0]} labels for {img.shape[0]} images")
        if lab.max(initial=0) > 9:
            raise InputError(path, f"label {int(lab.max())} out of range 0-9")
    if images.shape[0] <= N_VALIDATION:
        raise InputError(images_path, f"{images.shape[0]} training images, need more than {N_VALIDATION} for the "
                         "validation split")
    order = np.random.default_rng(SPLIT_SEED).permutation(images.shape[0])
    val_idx, train_idx = order[:N_VALIDATION], order[N_VALIDATION:]
    if max_train_samples is not None:
        train_idx = train_idx[:max_train_samples]

    def split(img, lab, idx=None):
        img = img if idx is None else img[idx]
        lab = lab if idx is None else lab[idx]
        return Split(img.reshape(len(img), -1).astype(np.float64) / 255.0, lab.astype(np.int64))

    return MNIST(split(images, labels, train_idx), split(images, labels, val_idx), split(test_images, test_labels),
                 str(directory))


def write_idx(path: str | Path, array: np.ndarray, magic: int) -> None:
    """Write an IDX file (gzipped when the name ends in .gz); used to make small test sets."""
    array = np.asarray(array, np.uint8)
    data = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    Path(path).write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)
