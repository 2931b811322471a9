"""Tiny ImageNet (200 classes, 64x64) from the official zip or its extracted folder.

Layout: ``wnids.txt`` (the 200 class ids), ``words.txt`` (id -> names),
``train/<wnid>/images/*.JPEG`` (500 per class) and ``val/images/*.JPEG`` labelled by
``val/val_annotations.txt`` (50 per class). The unlabelled ``test/`` split is not
used; the labelled val split serves as the test set. Some images are grayscale and
become RGB. Decoding 110,000 JPEGs takes a while, so the decoded arrays are cached
beside the data (or in the user cache when that folder is read-only) and a second
load reads them back in seconds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from superlens.data.dataset import DatasetSplits, ImageDataset, from_hwc
from superlens.data.download import check_digest, download, extract
from superlens.errors import UserError

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
FOLDER = "tiny-imagenet-200"
SIZE = 64
# ImageNet statistics: Tiny ImageNet is an ImageNet subset.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CACHE_VERSION = "v1"


def find_folder(root: Path, download_missing: bool = False) -> Path:
    for candidate in (root / FOLDER, root):
        if (candidate / "wnids.txt").exists():
            return candidate
    archive = root / ARCHIVE
    if not archive.exists():
        if not download_missing:
            raise UserError(
                f"Tiny ImageNet not found under {root}: expected {FOLDER}/ or {ARCHIVE}; "
                "pass --download to fetch it (237 MB), or --root to point at it"
            )
        download(URL, archive, MD5)
    else:
        check_digest(archive, MD5)
    extract(archive, root)
    if not (root / FOLDER / "wnids.txt").exists():
        raise UserError(f"{archive} did not contain {FOLDER}/wnids.txt: it is not the official Tiny ImageNet zip")
    return root / FOLDER


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise UserError(f"{path} is missing: {path.parent} does not have the official Tiny ImageNet layout")
    return [line.rstrip("\n\r") for line in path.read_text().splitlines() if line.strip()]


def _class_names(folder: Path, wnids: list[str]) -> list[str]:
    words = {}
    words_file = folder / "words.txt"
    if words_file.exists():
        for line in _read_lines(words_file):
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    return [words.get(w, w) for w in wnids]


def _list_files(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int], list[Path], list[int]]:
    index = {w: i for i, w in enumerate(wnids)}
    train_files, train_labels = [], []
    for wnid in wnids:
        image_dir = folder / "train" / wnid / "images"
        if not image_dir.is_dir():
            raise UserError(f"{image_dir} is missing: expected train/<wnid>/images/ for every id in wnids.txt")
        names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith((".jpeg", ".jpg")))
        if not names:
            raise UserError(f"{image_dir} holds no JPEG images")
        train_files += [image_dir / n for n in names]
        train_labels += [index[wnid]] * len(names)
    val_files, val_labels = [], []
    for line in _read_lines(folder / "val" / "val_annotations.txt"):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise UserError(f"{folder / 'val' / 'val_annotations.txt'}: cannot read line {line!r} (unknown class id?)")
        val_files.append(folder / "val" / "images" / parts[0])
        val_labels.append(index[parts[1]])
    return train_files, train_labels, val_files, val_labels


def _decode(files: list[Path]) -> np.ndarray:
    from PIL import Image
    from tqdm.auto import tqdm

    out = np.empty((len(files), SIZE, SIZE, 3), dtype=np.uint8)
    for i, path in enumerate(tqdm(files, desc="decoding", unit="img", leave=False, mininterval=1.0)):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (SIZE, SIZE):
                    img = img.resize((SIZE, SIZE), Image.BILINEAR)
                out[i] = np.asarray(img)
        except (OSError, SyntaxError) as exc:
            raise UserError(f"{path} is not a readable image ({exc}); re-extract the archive") from None
    return out


def _fingerprint(files: list[Path], labels: list[int]) -> str:
    h = hashlib.sha256(CACHE_VERSION.encode())
    for path, label in zip(files, labels):
        h.update(f"{path.parent.name}/{path.name}:{label}\n".encode())
    return h.hexdigest()[:16]


def _cache_dirs(folder: Path, key: str) -> list[Path]:
    user_cache = Path(os.environ.get("SUPERLENS_CACHE", Path.home() / ".cache" / "superlens"))
    return [folder / ".superlens-cache", user_cache / f"tinyimagenet-{key}"]


def _load_cached(dirs: list[Path], key: str) -> dict[str, np.ndarray] | None:
    for d in dirs:
        if (d / "key.txt").exists() and (d / "key.txt").read_text().strip() == key:
            try:
                return {name: np.load(d / f"{name}.npy") for name in ("train_x", "test_x")}
            except (OSError, ValueError):
                continue
    return None


def _save_cache(dirs: list[Path], key: str, arrays: dict[str, np.ndarray]) -> None:
    from superlens.fileio import atomic_path, write_text

    for d in dirs:
        try:
            for name, arr in arrays.items():
                with atomic_path(d / f"{name}.npy") as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, arr)
            write_text(d / "key.txt", key)  # written last: marks the cache complete
            return
        except OSError:
            continue  # read-only data folder: try the user cache


def load_tinyimagenet(root: str | Path, download_missing: bool = False, cache: bool = True) -> DatasetSplits:
    folder = find_folder(Path(root).expanduser(), download_missing)
    wnids = sorted(_read_lines(folder / "wnids.txt"))
    classes = _class_names(folder, wnids)
    train_files, train_labels, val_files, val_labels = _list_files(folder, wnids)
    key = _fingerprint(train_files + val_files, train_labels + val_labels)
    dirs = _cache_dirs(folder, key)
    arrays = _load_cached(dirs, key) if cache else None
    if arrays is None:
        arrays = {"train_x": _decode(train_files), "test_x": _decode(val_files)}
        if cache:
            _save_cache(dirs, key, arrays)
    common = dict(classes=classes, mean=MEAN, std=STD, name="tinyimagenet", meta={"wnids": wnids})
    return DatasetSplits(
        ImageDataset(from_hwc(arrays["train_x"]), torch.tensor(train_labels), split="train",
                     ids=[Path(f).relative_to(folder).as_posix() for f in train_files], **common),
        ImageDataset(from_hwc(arrays["test_x"]), torch.tensor(val_labels), split="test",
                     ids=[Path(f).relative_to(folder).as_posix() for f in val_files], **common),
    )
