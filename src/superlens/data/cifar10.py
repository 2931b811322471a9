"""CIFAR-10 from the official "python version" archive.

The batches are pickles written by Python 2: their strings load only with
``encoding="latin1"`` (or ``"bytes"``). Each batch is a dict with keys ``data``
(10000 x 3072 uint8, rows in CHW order), ``labels``, ``batch_label`` and ``filenames``;
``batches.meta`` holds ``label_names``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from superlens.data.dataset import DatasetSplits, ImageDataset
from superlens.data.download import check_digest, download, extract
from superlens.errors import UserError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
# Per-channel statistics of the 50,000 training images.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def find_folder(root: Path, download_missing: bool = False) -> Path:
    """The ``cifar-10-batches-py`` folder under ``root``, unpacking or fetching the archive if needed."""
    for candidate in (root / FOLDER, root):
        if (candidate / "batches.meta").exists() or (candidate / "data_batch_1").exists():
            return candidate
    archive = root / ARCHIVE
    if not archive.exists():
        if not download_missing:
            raise UserError(
                f"CIFAR-10 not found under {root}: expected {FOLDER}/ or {ARCHIVE}; "
                "pass --download to fetch it (163 MB), or --root to point at it"
            )
        download(URL, archive, MD5)
    else:
        check_digest(archive, MD5)
    extract(archive, root)
    if not (root / FOLDER).is_dir():
        raise UserError(f"{archive} did not contain {FOLDER}/: it is not the official CIFAR-10 python archive")
    return root / FOLDER


def _read_pickle(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"{path} is missing: {path.parent} is not a complete {FOLDER} folder")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as exc:  # any unpickling failure means a damaged file
        raise UserError(f"{path} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}); re-extract the archive") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR-10 batch (expected a dict, found {type(obj).__name__})")
    return obj


def _read_batches(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in names:
        batch = _read_pickle(folder / name)
        if "data" not in batch or "labels" not in batch:
            raise UserError(f"{folder / name} lacks the keys 'data' and 'labels': not a CIFAR-10 batch")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{folder / name}: data has shape {data.shape}, expected (N, 3072)")
        labels = np.asarray(batch["labels"], dtype=np.int64)
        if labels.shape[0] != data.shape[0]:
            raise UserError(f"{folder / name}: {data.shape[0]} images but {labels.shape[0]} labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def load_cifar10(root: str | Path, download_missing: bool = False) -> DatasetSplits:
    folder = find_folder(Path(root).expanduser(), download_missing)
    meta = _read_pickle(folder / "batches.meta")
    classes = [str(c) for c in meta.get("label_names", [])]
    if len(classes) != 10:
        raise UserError(f"{folder / 'batches.meta'} lists {len(classes)} class names, expected 10")
    common = dict(classes=classes, mean=MEAN, std=STD, name="cifar10")
    return DatasetSplits(
        ImageDataset(*_read_batches(folder, TRAIN_BATCHES), split="train", **common),
        ImageDataset(*_read_batches(folder, TEST_BATCHES), split="test", **common),
    )
