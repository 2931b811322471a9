"""Datasets as whole uint8 tensors: ``load(name)`` returns train and test splits.

Names: ``digits`` (bundled with scikit-learn, no download), ``cifar10``,
``tinyimagenet``, ``synthetic``, ``imagefolder:<path>`` and ``hf:<repo>`` (a Hugging Face
dataset's parquet snapshot in ``root``).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from superlens.data.dataset import DatasetSplits, ImageDataset, channel_stats, fixed_subset, long_tailed
from superlens.errors import UserError

__all__ = ["DatasetSplits", "ImageDataset", "channel_stats", "default_root", "fixed_subset", "load", "load_spec",
           "outside_pool", "long_tailed", "NAMES"]

NAMES = ("digits", "cifar10", "tinyimagenet", "synthetic", "imagefolder:<path>", "hf:<repo>")


def default_root() -> Path:
    """Where downloadable datasets live unless a root is given: $SUPERLENS_DATA or ~/.cache/superlens/data."""
    return Path(os.environ.get("SUPERLENS_DATA", Path.home() / ".cache" / "superlens" / "data"))


def load(name: str, root: str | os.PathLike | None = None, download: bool = False, **options: Any) -> DatasetSplits:
    """Load dataset ``name``; ``root`` is the folder that holds it (or its archive).

    ``download=True`` fetches a missing official archive (with checksum). ``options``
    go to the dataset's own loader (e.g. ``image_size`` for ``digits`` and
    ``imagefolder``, the generator settings for ``synthetic``).
    """
    base = Path(root) if root is not None else default_root()
    if name == "digits":
        from superlens.data.digits import load_digits_dataset

        return _call(name, load_digits_dataset, **options)
    if name == "cifar10":
        from superlens.data.cifar10 import load_cifar10

        return _call(name, load_cifar10, base, download, **options)
    if name == "tinyimagenet":
        from superlens.data.tinyimagenet import load_tinyimagenet

        return _call(name, load_tinyimagenet, base, download, **options)
    if name == "synthetic":
        from superlens.data.synthetic import make_synthetic

        return _call(name, make_synthetic, **options)
    if name.startswith("imagefolder:"):
        from superlens.data.imagefolder import load_imagefolder

        path = name.partition(":")[2]
        if not path:
            raise UserError("imagefolder needs a path: use imagefolder:/path/to/folder")
        return _call(name, load_imagefolder, path, **options)
    if name.startswith("hf:"):
        from superlens.data.hf import load_hf

        repo = name.partition(":")[2]
        if not repo:
            raise UserError("hf needs a repository name: use hf:<owner>/<name> with data.root its local snapshot")
        if root is None:
            raise UserError(f"{name} is read from a local snapshot: set data.root (huggingface-cli download {repo} "
                            "--repo-type dataset --local-dir <root>)")
        return _call(name, load_hf, repo, base, **options)
    raise UserError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")


def load_spec(spec, device=None) -> DatasetSplits:
    """The dataset a ``DataSpec`` names, with its fixed subsets and normalization overrides, on ``device``."""
    from dataclasses import replace

    train, test = load(spec.name, root=spec.root, download=spec.download, **spec.options)
    if spec.train_subset:
        train = fixed_subset(train, spec.train_subset)
    if spec.test_subset:
        test = fixed_subset(test, spec.test_subset)
    if spec.imbalance:
        train = long_tailed(train, spec.imbalance)
    if spec.mean or spec.std:
        stats = {k: tuple(float(v) for v in getattr(spec, k)) for k in ("mean", "std") if getattr(spec, k)}
        train, test = replace(train, **stats), replace(test, **stats)
    if device is not None:
        train, test = train.to(device), test.to(device)
    return DatasetSplits(train, test)


def outside_pool(spec, pool: ImageDataset, device=None) -> ImageDataset | None:
    """The training images of the dataset a ``DataSpec`` names that are not in ``pool`` (the images
    ``data.train_subset`` or ``data.imbalance`` left out, which no arm can label), with the pool's
    normalization, on ``device``; None when the pool is the whole training split. The test split is
    never among them."""
    from dataclasses import replace

    import numpy as np

    if not spec.train_subset and not spec.imbalance:
        return None
    train, _ = load(spec.name, root=spec.root, download=spec.download, **spec.options)
    rest = np.flatnonzero(~np.isin(train.ids, pool.ids))
    if len(rest) == 0:
        return None
    out = replace(train.subset(rest), mean=pool.mean, std=pool.std)
    return out.to(device) if device is not None else out


def _call(name: str, loader, *args: Any, **options: Any) -> DatasetSplits:
    params = inspect.signature(loader).parameters
    accepted = [p for p in list(params)[len(args):]]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(
            f"dataset {name!r} has no option {unknown[0]!r}; its options: {', '.join(accepted) or 'none'}"
        )
    return loader(*args, **options)
