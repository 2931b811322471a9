"""How far the psi protocol's count agrees with itself: the share of latents another SAE reproduces as the
match threshold moves, and between SAEs trained on two disjoint halves of the images.

A latent counts as a feature when another SAE reproduces it (mutual nearest decoder directions at
cosine >= match, 0.9 by default). Two readings say whether that threshold suits a layer:
- the reproduced fraction against the threshold (0.5 to 0.95): a plateau says the matched latents are
  the same directions, a steady fall says the threshold decides what is counted;
- split-half agreement: SAEs trained on two disjoint halves of the images reproduce each other's latents
  about as often as two seeds on the same half when the latents are properties of the layer, and less
  when they are properties of the particular images.
"""

from __future__ import annotations

import numpy as np

from superlens.analysis.superposition import fit_protocol, reproduced

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def reproduced_fraction(a: np.ndarray, b: np.ndarray, thresholds=THRESHOLDS, live: np.ndarray | None = None) -> list[float]:
    """The share of ``a``'s rows (unit decoder directions; only the ``live`` ones when given) that ``b``
    reproduces at each threshold."""
    sim = a @ b.T
    rows = np.ones(len(a), bool) if live is None else np.asarray(live, bool)
    if not rows.any():
        return [0.0 for _ in thresholds]
    return [float(reproduced(a, b, t, sim)[rows].mean()) for t in thresholds]


def split_half_agreement(activations, *, groups, labels=None, thresholds=THRESHOLDS, seed: int = 0, device=None,
                         **settings) -> dict:
    """Two protocol SAEs on each of two disjoint halves of the images.

    ``activations``: (rows, neurons); ``groups``: the image each row comes from (rows of one image stay in
    one half, so no image is seen by both). Returns, per threshold, the reproduced fraction within a half
    (the two seeds of one half, both ways, both halves) and across halves (each SAE of one half against
    each of the other), over live latents; ``settings`` as for ``measure_superposition`` (``seeds`` is 2).
    """
    from superlens.specs import SuperpositionSettings

    opts = SuperpositionSettings.from_settings({**settings, "seeds": 2})
    x = np.asarray(activations, np.float32)
    groups = np.asarray(groups)
    images = np.unique(groups)
    first = np.random.default_rng(seed).permutation(images)[: len(images) // 2]
    in_first = np.isin(groups, first)
    fits = []
    for half, rows in enumerate((in_first, ~in_first)):
        fits.append(fit_protocol(x[rows], None if labels is None else np.asarray(labels)[rows], opts, device=device,
                                 seed_offset=10 * half))
    decoders = [f.decoders[s] for f in fits for s in range(2)]  # half 0: SAEs 0 and 1; half 1: SAEs 2 and 3
    live = [f.summaries[s][1] > 0 for f in fits for s in range(2)]

    def curve(pairs) -> list[float]:
        return np.mean([reproduced_fraction(decoders[i], decoders[j], thresholds, live[i]) for i, j in pairs], 0).tolist()

    within = curve([(0, 1), (1, 0), (2, 3), (3, 2)])
    across = curve([(i, j) for i in range(4) for j in range(4) if (i < 2) != (j < 2)])
    return {"thresholds": list(thresholds), "within_half": within, "across_halves": across, "images_per_half": [int(len(first)), int(len(images) - len(first))],
            "vectors_per_half": [int(in_first.sum()), int((~in_first).sum())],
            "steps": [f.batch.steps for f in fits], "converged": [f.batch.converged for f in fits]}
