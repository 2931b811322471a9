"""Image classification datasets in the Hugging Face Hub's parquet layout, read offline.

``data.name: hf:<repo>`` with ``data.root`` the local snapshot of the dataset repository,
as ``huggingface-cli download <repo> --repo-type dataset --local-dir <root>`` writes it:
parquet files named ``<split>-NNNNN-of-NNNNN.parquet`` (or ``<split>.parquet``, or any
parquet files under a ``<split>/`` folder) anywhere below the root. The image column holds
encoded images (a struct with ``bytes``, or plain binary), the label column integers.
Both are found from the Hub's feature metadata stored in the parquet files (``Image`` and
``ClassLabel`` features), else by type, else set with ``image_column`` / ``label_column``.
Class names come from the ``ClassLabel`` feature. A ``valid``/``validation`` split serves as
the test split when there is no ``test``. Each image's id is ``<split>/<row>``.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from superlens.data.dataset import DatasetSplits, ImageDataset, channel_stats, from_hwc
from superlens.errors import UserError

TEST_NAMES = ("test", "valid", "validation", "val")
_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)(?:-\d{5}-of-\d{5})?\.parquet$")


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("hf: datasets are read with pyarrow; install it with pip install 'superlens[hf]'") from None
    return pq


def find_splits(root: Path) -> dict[str, list[Path]]:
    """Split name -> its parquet files (sorted) below ``root``."""
    if not root.is_dir():
        raise UserError(f"{root} is missing: point data.root at the dataset's local snapshot "
                        "(huggingface-cli download <repo> --repo-type dataset --local-dir <root>)")
    splits: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.parquet")):
        match = _SHARD.match(path.name)
        split = match.group("split") if match else path.parent.name
        if split not in ("train", *TEST_NAMES) and path.parent.name in ("train", *TEST_NAMES):
            split = path.parent.name
        splits.setdefault(split, []).append(path)
    if not splits:
        raise UserError(f"{root} holds no .parquet files: is it a snapshot of a dataset repository in parquet form?")
    return splits


def _features(schema) -> dict[str, Any]:
    """The Hub's feature metadata of a parquet file ({} when it has none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        return json.loads(raw).get("info", {}).get("features", {}) or {}
    except ValueError:
        return {}


def _columns(schema, image_column: str | None, label_column: str | None, where: Path) -> tuple[str, str]:
    import pyarrow as pa

    names = schema.names
    feats = _features(schema)
    for given, what in ((image_column, "image_column"), (label_column, "label_column")):
        if given is not None and given not in names:
            raise UserError(f"{where}: no column {given!r} (data.options.{what}); its columns: {', '.join(names)}")

    def encoded(name: str) -> bool:
        t = schema.field(name).type
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or (
            pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields)))

    image = image_column or next((n for n in names if feats.get(n, {}).get("_type") == "Image"), None) or next(
        (n for n in names if encoded(n)), None)
    label = label_column or next((n for n in names if feats.get(n, {}).get("_type") == "ClassLabel"), None) or next(
        (n for n in names if n in ("label", "labels", "fine_label")), None)
    if image is None:
        raise UserError(f"{where}: no image column found among {', '.join(names)}; set data.options.image_column")
    if label is None:
        raise UserError(f"{where}: no label column found among {', '.join(names)}; set data.options.label_column")
    return image, label


def _decode(cells: list[Any], size: tuple[int, int] | None, where: Path) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image

    arrays = []
    for row, cell in enumerate(cells):
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if data is None:
            raise UserError(f"{where}: row {row} has no image bytes (an image stored only as a path is not supported)")
        try:
            with Image.open(io.BytesIO(data)) as img:
                img = img.convert("RGB")
                size = size or img.size
                if img.size != size:
                    img = img.resize(size, Image.BILINEAR)
                arrays.append(np.asarray(img))
        except (OSError, SyntaxError) as exc:
            raise UserError(f"{where}: row {row} is not a readable image ({exc})") from None
    return np.stack(arrays), size


def load_hf(repo: str, root: str | Path, image_column: str | None = None, label_column: str | None = None,
            image_size: int | None = None, train_split: str = "train", test_split: str | None = None) -> DatasetSplits:
    """The train and test splits of the parquet snapshot of ``repo`` in ``root``.

    ``image_size`` resizes every image to that square size (default: the first training
    image's size); ``test_split`` names the evaluation split (default: test, else valid,
    validation or val). Normalization statistics come from the training split.
    """
    pq = _pyarrow()
    folder = Path(root).expanduser()
    splits = find_splits(folder)
    test_split = test_split or next((s for s in TEST_NAMES if s in splits), None)
    for split, what in ((train_split, "train_split"), (test_split, "test_split")):
        if split is None or split not in splits:
            raise UserError(f"{folder} has no {'test' if split is None else repr(split)} split "
                            f"(data.options.{what}); its splits: {', '.join(sorted(splits))}")
    size = (image_size, image_size) if image_size else None
    classes: list[str] | None = None
    loaded = {}
    for split in (train_split, test_split):
        images, labels = [], []
        for path in splits[split]:
            pfile = pq.ParquetFile(path)
            image, label = _columns(pfile.schema_arrow, image_column, label_column, path)
            if classes is None:
                names = _features(pfile.schema_arrow).get(label, {}).get("names")
                classes = [str(n) for n in names] if names else None
            table = pfile.read(columns=[image, label])
            x, size = _decode(table.column(image).to_pylist(), size, path)
            images.append(x)
            labels.append(np.asarray(table.column(label).to_pylist(), dtype=np.int64))
        loaded[split] = (np.concatenate(images), np.concatenate(labels))
    y_all = np.concatenate([loaded[s][1] for s in loaded])
    if classes is None:
        classes = [str(i) for i in range(int(y_all.max()) + 1)]
    if y_all.min() < 0 or y_all.max() >= len(classes):
        raise UserError(f"{folder}: labels {int(y_all.min())}..{int(y_all.max())} do not fit the {len(classes)} class "
                        "names of its metadata")

    def build(split: str, name: str, mean=None, std=None) -> ImageDataset:
        x, y = loaded[split]
        images = from_hwc(x)
        if mean is None:
            mean, std = channel_stats(images)
        return ImageDataset(images, torch.from_numpy(y), classes, mean, std, name=f"hf:{repo}", split=name,
                            ids=np.char.add(f"{split}/", np.arange(len(y)).astype(str)))

    train = build(train_split, "train")
    return DatasetSplits(train, build(test_split, "test", train.mean, train.std))
