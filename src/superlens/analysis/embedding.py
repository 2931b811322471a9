"""2-D t-SNE embeddings with openTSNE, after PCA to 50 dimensions."""

from __future__ import annotations

import numpy as np

from superlens.analysis.validate import features_and_labels


def tsne(x, seed: int = 0, pca_dims: int = 50, perplexity: float = 30.0, n_jobs: int = 1) -> np.ndarray:
    """(n, 2) t-SNE coordinates.

    ``pca_dims``: features are first projected on their leading principal components
    (skipped when they have no more dimensions than that); ``perplexity`` is lowered to
    (n - 1) / 3 for small n, as t-SNE needs; ``seed`` fixes PCA and the optimisation.
    Initialization is openTSNE's default (PCA of the input).
    """
    from openTSNE import TSNE
    from sklearn.decomposition import PCA

    x, _ = features_and_labels(x)
    if x.shape[1] > pca_dims and len(x) > pca_dims:
        x = PCA(pca_dims, random_state=seed).fit_transform(x)  # in the features' own dtype: no float64 copy
    x = x.astype(np.float64)
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))
    return np.asarray(TSNE(2, perplexity=perplexity, random_state=seed, n_jobs=n_jobs, verbose=False).fit(x))
