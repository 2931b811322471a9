"""The dose of an active-learning arm: how far its labelled set is from random sampling's.

A strategy can change a network's superposition only through the data it labels. So
before reading "no difference in psi" as "the strategy does not change superposition",
check that it changed the data: per round, the arm's labelled set against ``al-random``'s
of the same seed (the same initial set, the same round-0 model), in the terms the theory
of superposition says matter (docs/superposition.md, "The dose of an arm"):

- ``class_js``: Jensen-Shannon divergence (bits, 0 to 1) of the two class histograms;
- ``latent_js``: of the two latent-frequency profiles (how often each latent of one fixed
  SAE fires among the set's images, normalized to a distribution);
- ``margin_shift``: the arm's picks' mean margin minus random's picks' (the gap between the
  two most probable classes; negative: the arm picks images the model is less sure of);
- ``typicality_shift``: likewise for typicality, as a percentile within the pool (0 to 1:
  the rank of 1 / mean distance to the k nearest pool images in feature space; random picks
  read 0.5 on average, so a negative shift means the arm picks atypical, outlying images).

Margin, typicality and latents are read from one reference per seed, the seed's round-0
model, which every arm of the seed starts from: the same yardstick for every arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from superlens.errors import UserError

MEASURES = ("class_js", "latent_js", "margin_shift", "typicality_shift")
DISTANCES = ("class_js", "latent_js")  # >= 0, 0 for identical sets; the shifts are signed


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence in bits (0 to 1) of two non-negative histograms of the same bins, each
    normalized to sum 1; 0 when both are empty, 1 when exactly one is."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1 or (p < 0).any() or (q < 0).any():
        raise UserError(f"js_divergence needs two non-negative histograms of the same bins, got {p.shape} and {q.shape}")
    if p.sum() == 0 or q.sum() == 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        keep = a > 0
        return float((a[keep] * np.log2(a[keep] / m[keep])).sum())

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


@dataclass
class DoseReference:
    """What the dose reads of every pool image, by training-set index, from one fixed model."""

    labels: np.ndarray  # (n,) class
    margin: np.ndarray  # (n,) top-1 minus top-2 probability
    typicality: np.ndarray  # (n,) percentile in the pool (0-1) of 1 / mean distance to the k nearest pool images
    fires: np.ndarray | None  # (n, latents) bool: the latent is active somewhere in the image; None without an SAE
    num_classes: int


def reference_from(probs: np.ndarray, distance: np.ndarray, labels: np.ndarray,
                   fires: np.ndarray | None = None) -> DoseReference:
    """The reference of a pool from one model's class probabilities (n, classes), each image's mean distance
    to its k nearest pool images in that model's features (n,) and, optionally, which latents of one SAE
    fire on each image (n, latents)."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    distance = np.asarray(distance, dtype=np.float64)
    order = np.argsort(-distance, kind="stable")  # the farthest from its neighbours first: least typical
    typicality = np.empty(len(distance))
    typicality[order] = (np.arange(len(distance)) + 0.5) / max(1, len(distance))
    return DoseReference(np.asarray(labels), (top2[:, 1] - top2[:, 0]).astype(np.float64), typicality,
                         None if fires is None else np.asarray(fires, dtype=bool), probs.shape[1])


def labelled_by_round(acquired: np.ndarray) -> dict[int, np.ndarray]:
    """The labelled set (training-set indices) after each round, from ``pool.npy`` (the round each image
    was labelled in, -1 for never)."""
    rounds = sorted(int(r) for r in np.unique(acquired) if r >= 0)
    return {r: np.flatnonzero((acquired >= 0) & (acquired <= r)) for r in rounds}


def dose(reference: DoseReference, arm: np.ndarray, random: np.ndarray, arm_picks: np.ndarray,
         random_picks: np.ndarray) -> dict[str, float | None]:
    """The four measures of one arm's labelled set ``arm`` (indices) against random's ``random``, with the
    images each picked after the initial set (``arm_picks``, ``random_picks``)."""
    def hist(members: np.ndarray) -> np.ndarray:
        return np.bincount(reference.labels[members], minlength=reference.num_classes)

    def shift(values: np.ndarray) -> float | None:
        if not len(arm_picks) or not len(random_picks):
            return None
        return float(values[arm_picks].mean() - values[random_picks].mean())

    out: dict[str, float | None] = {"class_js": js_divergence(hist(arm), hist(random)), "latent_js": None}
    if reference.fires is not None:
        out["latent_js"] = js_divergence(reference.fires[arm].sum(0), reference.fires[random].sum(0))
    out["margin_shift"] = shift(reference.margin)
    out["typicality_shift"] = shift(reference.typicality)
    return out


def arm_dose(reference: DoseReference, arm_acquired: np.ndarray, random_acquired: np.ndarray) -> list[dict[str, Any]]:
    """The dose after every round both ran (round 0, the shared initial set, has none: it reads 0)."""
    mine, theirs = labelled_by_round(arm_acquired), labelled_by_round(random_acquired)
    out = []
    for round_ in sorted(set(mine) & set(theirs)):
        picks = np.flatnonzero((arm_acquired >= 1) & (arm_acquired <= round_))
        random_picks = np.flatnonzero((random_acquired >= 1) & (random_acquired <= round_))
        out.append({"round": round_, "n_labeled": int(len(mine[round_])),
                    **dose(reference, mine[round_], theirs[round_], picks, random_picks)})
    return out


def within_reference(values: dict[str, list], reference: dict[str, list]) -> bool | None:
    """Whether an arm's final dose is inside the spread of the A/A arm's (another random sampling of the
    same seeds): every distance's mean at most the A/A arm's largest per-seed value, every shift's mean at
    most its largest absolute per-seed value. None when there is nothing to compare."""
    compared = False
    for measure in MEASURES:
        mine = [v for v in values.get(measure, []) if v is not None]
        theirs = [abs(v) for v in reference.get(measure, []) if v is not None]
        if not mine or not theirs:
            continue
        compared = True
        mean = float(np.mean(mine))
        if (mean if measure in DISTANCES else abs(mean)) > max(theirs):
            return False
    return True if compared else None
