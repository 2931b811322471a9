"""Persisted pool state: one int array over the training set, -1 unlabelled, r acquired in round r."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from superlens.errors import UserError
from superlens.fileio import atomic_path

UNLABELED = -1


class Pool:
    def __init__(self, acquired: np.ndarray) -> None:
        self.acquired = np.asarray(acquired, dtype=np.int32)

    @classmethod
    def empty(cls, n: int) -> "Pool":
        return cls(np.full(n, UNLABELED, dtype=np.int32))

    def __len__(self) -> int:
        return len(self.acquired)

    @property
    def labeled(self) -> np.ndarray:
        return np.flatnonzero(self.acquired != UNLABELED)

    @property
    def unlabeled(self) -> np.ndarray:
        return np.flatnonzero(self.acquired == UNLABELED)

    def acquire(self, ids: np.ndarray, round_: int) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("a query selected the same image twice")
        if len(ids) and (self.acquired[ids] != UNLABELED).any():
            raise ValueError("a query selected an image that is already labelled")
        self.acquired[ids] = round_

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.acquired)

    @classmethod
    def load(cls, path: str | Path) -> "Pool":
        return cls(np.load(path))


def initial_set(labels: np.ndarray, size: int, how: str, rng: np.random.Generator) -> np.ndarray:
    """Indices of the first labelled images: ``random``, or ``balanced`` (equal per class, rest random)."""
    n = len(labels)
    if size > n:
        raise UserError(f"active.initial_size={size} is larger than the training pool ({n} images)")
    if how == "random":
        return np.sort(rng.choice(n, size, replace=False))
    if how != "balanced":
        raise UserError(f"active.initial must be 'random' or 'balanced', got {how!r}")
    classes = np.unique(labels)
    per_class = size // len(classes)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        chosen.append(rng.choice(members, min(per_class, len(members)), replace=False))
    chosen = np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), chosen)
    extra = rng.choice(rest, size - len(chosen), replace=False)
    return np.sort(np.concatenate([chosen, extra]).astype(np.int64))
