"""A user's own images: ``<path>/train/<class>/*`` and ``<path>/test/<class>/*``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from superlens.data.dataset import DatasetSplits, ImageDataset, channel_stats, from_hwc
from superlens.errors import UserError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _scan(split_dir: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise UserError(f"{split_dir} is missing: an image folder needs train/<class>/ and test/<class>/ subfolders")
    found = {}
    for cls in sorted(os.listdir(split_dir)):
        if (split_dir / cls).is_dir():
            files = sorted(p for p in (split_dir / cls).iterdir() if p.suffix.lower() in EXTENSIONS)
            if files:
                found[cls] = files
    if not found:
        raise UserError(f"{split_dir} has no <class>/ subfolders with images ({', '.join(EXTENSIONS)})")
    return found


def _decode(files: list[Path], size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != size:
                    img = img.resize(size, Image.BILINEAR)
                arrays.append(np.asarray(img))
        except (OSError, SyntaxError) as exc:
            raise UserError(f"{path} is not a readable image ({exc})") from None
    return np.stack(arrays)


def load_imagefolder(path: str | Path, image_size: int | None = None) -> DatasetSplits:
    """Classes are the sorted train subfolder names; test classes must be among them.

    Images are resized to ``image_size`` x ``image_size`` when given, else to the size
    of the first training image. Normalization statistics come from the training split.
    """
    root = Path(path).expanduser()
    train, test = _scan(root / "train"), _scan(root / "test")
    classes = list(train)
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise UserError(f"{root / 'test'} has classes with no training images: {', '.join(unknown)}")
    from PIL import Image

    if image_size:
        size = (image_size, image_size)
    else:
        with Image.open(next(iter(train.values()))[0]) as first:
            size = first.size

    def build(found: dict[str, list[Path]], split: str, mean=None, std=None) -> ImageDataset:
        files = [f for cls in found for f in found[cls]]
        labels = torch.tensor([classes.index(cls) for cls in found for _ in found[cls]], dtype=torch.int64)
        images = from_hwc(_decode(files, size))
        if mean is None:
            mean, std = channel_stats(images)
        ids = [f.relative_to(root).as_posix() for f in files]
        return ImageDataset(images, labels, classes, mean, std, name=f"imagefolder:{root}", split=split, ids=ids)

    train_ds = build(train, "train")
    return DatasetSplits(train_ds, build(test, "test", train_ds.mean, train_ds.std))
