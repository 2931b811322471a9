"""Query strategies: a registry of named rules that pick which unlabelled images to label.

Each strategy declares what it needs from the model (``probs``, ``embeddings``,
``labeled_embeddings``, ``mc_probs``); the loop computes exactly that in one pass
over the pool with evaluation transforms and hands it over as :class:`QueryInputs`.
A strategy that needs the ``network`` gets the model, the training split and the recipe
instead, and reads the layers it wants itself.
``select`` returns positions into the unlabelled pool, best first; a strategy that ranks
the pool by one score per image leaves it in ``inputs.scores`` (saved with the query).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from superlens.active.kcenter import greedy_kcenter, greedy_kcenter_dense, kmeanspp_seeding, kmeanspp_seeding_dense
from superlens.errors import UserError

EPS = 1e-12


@dataclass
class QueryInputs:
    probs: np.ndarray | None = None  # (n, C) softmax of the unlabelled pool
    embeddings: np.ndarray | None = None  # (n, D) penultimate features of the unlabelled pool
    labeled_embeddings: np.ndarray | None = None  # (L, D)
    mc_probs: Iterable[np.ndarray] | None = None  # T arrays (n, C): softmax under T dropout masks
    pool_ids: np.ndarray | None = None  # (n,) training-set index of each unlabelled image
    labeled_ids: np.ndarray | None = None  # (L,) training-set index of each labelled image
    state: dict[str, Any] = field(default_factory=dict)  # kept between rounds by the loop
    scores: np.ndarray | None = None  # (n,) set by a strategy that ranks the pool by a score (higher: picked first)
    device: Any = None  # where the heavy parts may run: on an accelerator, k-center and k-means++ run there
    model: Any = None  # the current model, for a strategy that needs the ``network`` (its layers)
    images: Any = None  # the training split (an ImageDataset): pool_ids and labeled_ids index it
    recipe: Any = None  # how the model reads images (normalisation, precision)
    record: dict[str, Any] = field(default_factory=dict)  # what the strategy adds to the round's record


def _accelerator(inputs: QueryInputs):
    """The device to run a strategy's dense parts on, or None to keep them on the CPU."""
    device = torch.device(inputs.device) if inputs.device is not None else None
    return device if device is not None and device.type != "cpu" else None


@dataclass(frozen=True)
class Strategy:
    name: str
    needs: frozenset[str]
    select: Callable[[QueryInputs, int, np.random.Generator], np.ndarray]


REGISTRY: dict[str, Strategy] = {}


def register(name: str, needs: set[str]):
    def wrap(fn):
        REGISTRY[name] = Strategy(name, frozenset(needs), fn)
        return fn

    return wrap


def parse_arm(arm: str) -> tuple[str, int]:
    """``al-<strategy>[@<k>]`` -> (strategy, replicate): ``@k`` (k >= 2) is a replicate of the arm with
    an independent selection stream (an A/A control when the strategy is random); 1 without it."""
    name, _, replicate = arm[3:].partition("@")
    if replicate and not (replicate.isdigit() and int(replicate) >= 2):
        raise UserError(f"arm {arm!r}: a replicate is written al-<strategy>@<k> with an integer k >= 2")
    return name, int(replicate) if replicate else 1


def get(name: str) -> Strategy:
    if name not in REGISTRY:
        raise UserError(f"unknown strategy {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, largest first; ties go to the lower index."""
    order = np.argsort(-scores, kind="stable")
    return order[:k]


# --- scores of a probability matrix (higher = more informative) ------------------

def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    return 1.0 - probs.max(axis=1)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])  # a small margin between the best two classes ranks high


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(probs + EPS)).sum(axis=1)


def bald_scores(mc_probs: Iterable[np.ndarray]) -> np.ndarray:
    """Mutual information between label and weights: H(mean_t p_t) - mean_t H(p_t).

    ``mc_probs`` is consumed one sample at a time, so T samples never sit in memory together.
    """
    total, total_entropy, t = None, None, 0
    for p in mc_probs:
        p = np.asarray(p)
        total = p.copy() if total is None else total + p
        h = entropy_scores(p)
        total_entropy = h if total_entropy is None else total_entropy + h
        t += 1
    return entropy_scores(total / t) - total_entropy / t


# --- the registry ------------------------------------------------------------------

# uniformly random images (the control every strategy is compared with)
@register("random", set())
def _random(inputs: QueryInputs, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(len(inputs.pool_ids))[:k]


# largest 1 - max softmax probability
@register("least_confidence", {"probs"})
def _least_confidence(inputs, k, rng):
    inputs.scores = least_confidence_scores(inputs.probs)
    return top_k(inputs.scores, k)


# smallest gap between the two most probable classes
@register("margin", {"probs"})
def _margin(inputs, k, rng):
    inputs.scores = margin_scores(inputs.probs)
    return top_k(inputs.scores, k)


# largest entropy of the predicted class distribution
@register("entropy", {"probs"})
def _entropy(inputs, k, rng):
    inputs.scores = entropy_scores(inputs.probs)
    return top_k(inputs.scores, k)


# largest mutual information under MC dropout (Gal et al. 2017)
@register("bald", {"mc_probs"})
def _bald(inputs, k, rng):
    inputs.scores = bald_scores(inputs.mc_probs)
    return top_k(inputs.scores, k)


# greedy k-center on embeddings (Sener & Savarese 2018)
@register("coreset", {"embeddings", "labeled_embeddings"})
def _coreset(inputs, k, rng):
    device = _accelerator(inputs)
    if device is not None:
        picked, radii = greedy_kcenter_dense(inputs.embeddings, inputs.labeled_embeddings, k, rng, device)
    else:
        picked, radii = greedy_kcenter(inputs.embeddings, inputs.labeled_embeddings, k, rng)
    inputs.state["coreset_radii"] = radii
    return picked


def badge_factors(probs: np.ndarray, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two factors of BADGE's gradient embedding g_i = a_i (outer) h_i.

    a_i = p_i - onehot(argmax p_i) is the loss gradient w.r.t. the logits under the
    predicted label, h_i the penultimate features; the last layer's gradient is their
    outer product. It is never formed: <g_i, g_j> = <a_i, a_j> <h_i, h_j>.
    """
    a = probs.astype(np.float32).copy()
    a[np.arange(len(a)), probs.argmax(axis=1)] -= 1.0
    return a, np.ascontiguousarray(embeddings, dtype=np.float32)


# k-means++ seeding on gradient embeddings (Ash et al. 2020)
@register("badge", {"probs", "embeddings"})
def _badge(inputs, k, rng):
    a, h = badge_factors(inputs.probs, inputs.embeddings)
    norms = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", h, h)
    device = _accelerator(inputs)
    if device is not None:
        return kmeanspp_seeding_dense([a, h], k, rng, int(np.argmax(norms)), device)
    return kmeanspp_seeding([a, h], k, rng, first=int(np.argmax(norms)))


def cluster_pool(
    embeddings: np.ndarray, n_clusters: int, rng: np.random.Generator, micro: int = 1000, pca_dims: int = 64
) -> np.ndarray:
    """Average-linkage agglomerative clusters of the pool.

    Full hierarchical clustering of a 50,000-image pool needs an n x n distance matrix,
    so the pool is projected on its first ``pca_dims`` principal components and
    summarized by ``micro`` k-means centroids, which average linkage then merges into
    ``n_clusters``; each image takes its centroid's cluster.
    """
    from sklearn.cluster import AgglomerativeClustering, MiniBatchKMeans

    from superlens.active.typical import principal_components

    n = len(embeddings)
    n_clusters = max(1, min(n_clusters, n))
    seed = int(rng.integers(2**31))
    if n <= micro:
        micro_ids, centroids = np.arange(n), embeddings
    else:
        if embeddings.shape[1] > pca_dims:
            embeddings = principal_components(embeddings, pca_dims)
        km = MiniBatchKMeans(micro, random_state=seed, n_init=1, batch_size=4096)
        micro_ids = km.fit_predict(embeddings)
        centroids = km.cluster_centers_
    if len(centroids) <= n_clusters:
        return micro_ids
    merged = AgglomerativeClustering(n_clusters=n_clusters, linkage="average").fit_predict(centroids)
    return merged[micro_ids]


# lowest margins, spread round-robin over clusters (Citovsky et al. 2021)
@register("cluster_margin", {"probs", "embeddings"})
def _cluster_margin(inputs, k, rng, margin_multiplier: float = 10.0, n_clusters: int = 200):
    """Take the ``margin_multiplier * k`` lowest-margin images, then pick round-robin from their
    clusters, smallest cluster first, one random image at a time. The pool is clustered once
    into ``n_clusters``, at the first query, and the clusters are kept for later rounds."""
    state = inputs.state
    if "cluster_of" not in state:
        ids = cluster_pool(inputs.embeddings, n_clusters, rng)
        state["cluster_of"] = dict(zip(inputs.pool_ids.tolist(), ids.tolist()))
    clusters = np.array([state["cluster_of"].get(int(i), -1 - int(i)) for i in inputs.pool_ids])
    inputs.scores = margin_scores(inputs.probs)
    candidates = top_k(inputs.scores, min(len(inputs.pool_ids), int(margin_multiplier * k)))
    groups: dict[int, list[int]] = {}
    for c in candidates:
        groups.setdefault(int(clusters[c]), []).append(int(c))
    queues = sorted(groups.values(), key=len)
    for q in queues:
        rng.shuffle(q)
    chosen: list[int] = []
    while len(chosen) < k and queues:
        queues = [q for q in queues if q]
        for q in queues:
            if len(chosen) == k:
                break
            chosen.append(q.pop())
    return np.asarray(chosen, dtype=np.int64)


# --- low-budget strategies: typical, well-covering images ---------------------------

def _embeddings(inputs: QueryInputs, embedding: str) -> tuple[np.ndarray, np.ndarray]:
    """(pool, labelled) embeddings: the current model's (``model``), or those of the model at
    the first query, kept for every later round (``round0``: a fixed representation, as both
    papers use a self-supervised one)."""
    if embedding == "model":
        return inputs.embeddings, inputs.labeled_embeddings
    if embedding != "round0":
        raise UserError(f"embedding must be 'model' or 'round0', got {embedding!r}")
    labeled_ids = inputs.labeled_ids if inputs.labeled_ids is not None else np.zeros(0, np.int64)
    if "fixed_embeddings" not in inputs.state:
        ids = np.concatenate([inputs.pool_ids, labeled_ids])
        inputs.state["fixed_embeddings"] = {"ids": ids, "values": np.concatenate([inputs.embeddings, inputs.labeled_embeddings])}
    fixed = inputs.state["fixed_embeddings"]
    order = np.argsort(fixed["ids"])
    lookup = lambda ids: fixed["values"][order[np.searchsorted(fixed["ids"], ids, sorter=order)]]  # noqa: E731
    return lookup(inputs.pool_ids), lookup(labeled_ids)


# the most typical image of each largest uncovered cluster (Hacohen et al. 2022)
@register("typiclust", {"embeddings", "labeled_embeddings"})
def _typiclust(inputs, k, rng, knn: int = 20, max_clusters: int = 500, min_cluster_size: int = 5,
               embedding: str = "model"):
    """``knn``: neighbours for typicality; ``max_clusters``: cap on labelled + budget clusters;
    ``min_cluster_size``: smaller clusters are used only when no other is left;
    ``embedding``: ``model`` or ``round0`` (see ``_embeddings``)."""
    from superlens.active.typical import typiclust

    pool, labeled = _embeddings(inputs, embedding)
    return typiclust(pool, labeled, k, rng, k=knn, max_clusters=max_clusters, min_cluster_size=min_cluster_size,
                     device=_accelerator(inputs))


# greedy maximum coverage by delta-balls of pure radius (Yehuda et al. 2022)
@register("probcover", {"embeddings", "labeled_embeddings", "probs"})
def _probcover(inputs, k, rng, delta: float | None = None, purity: float = 0.95, purity_sample: int = 2000,
               pca_dims: int | None = 64, max_degree: int | None = 1000, embedding: str = "model"):
    """``delta``: ball radius on L2-normalized embeddings (None: the largest whose balls stay
    ``purity`` pure under k-means pseudo-labels with one cluster per class, estimated on
    ``purity_sample`` points); ``pca_dims``: principal components the balls are measured
    in (None: all); ``max_degree``: mean points per ball the estimated ``delta`` may reach
    (None: unbounded); ``embedding``: ``model`` or ``round0``."""
    from superlens.active.typical import probcover

    pool, labeled = _embeddings(inputs, embedding)
    classes = inputs.probs.shape[1] if inputs.probs is not None else 10
    picks, used = probcover(pool, labeled, k, rng, delta=delta, purity=purity, pseudo_clusters=classes,
                            purity_sample=purity_sample, pca_dims=pca_dims, max_degree=max_degree,
                            device=_accelerator(inputs))
    inputs.state.setdefault("probcover_delta", []).append(used)
    return picks


# --- strategies that look through the lens: SAE latents of the current model's layer -----

def _lens(inputs: QueryInputs, rng, layer, fit_images, expansion, sae_k, steps, batch_size, match, min_latents,
          labeled: bool = True):
    """The round's latent lens (``superlens.active.latents``) and its (fires, pair) summaries of the
    unlabelled pool and (``labeled``) of the labelled set, else None; the round's record says how many
    latents the lens used (``lens_latents``) and how many the second seed reproduced (``lens_reproduced``):
    the two are equal when the reproduced ones were used."""
    from superlens.active.latents import fit_lens, summaries

    net, data, recipe, device = inputs.model, inputs.images, inputs.recipe, inputs.device
    lens = fit_lens(net, data, layer, recipe, device, rng, fit_images=fit_images, expansion=expansion, k=sae_k,
                    steps=steps, batch_size=batch_size, match=match, min_latents=min_latents)
    inputs.record.update({"lens_latents": int(lens.keep.sum()), "lens_reproduced": lens.reproduced})
    ids = inputs.labeled_ids if inputs.labeled_ids is not None else np.zeros(0, np.int64)
    return summaries(lens, net, data, inputs.pool_ids, layer, recipe, device), \
        summaries(lens, net, data, ids, layer, recipe, device) if labeled else None


# even out how often each reproduced latent appears in the labelled set (greedy, rare latents first)
@register("latent_coverage", {"network"})
def _latent_coverage(inputs, k, rng, layer: str = "layer4", fit_images: int = 1000, expansion: int = 4,
                     sae_k: int = 4, steps: int = 600, batch_size: int = 512, match: float = 0.9,
                     min_latents: int = 16):
    """Fit the round's latent lens on ``layer`` (two TopK SAEs of ``expansion`` x channels latents and
    ``sae_k`` active per vector, on ``fit_images`` pool images, at most ``steps`` steps of ``batch_size``;
    the latents reproduced at decoder cosine ``match`` are used, or all of the first SAE's when fewer than
    ``min_latents`` are), then pick greedily to maximise sum_j log(1 + c_j) over the used latents j, c_j
    the labelled images on which j fires (``latents.coverage_picks``). The query's score of a picked image
    is its gain when picked; of the others, their gain before the first pick."""
    from superlens.active.latents import coverage_picks

    (pool_fires, _), (labeled_fires, _) = _lens(inputs, rng, layer, fit_images, expansion, sae_k, steps,
                                                batch_size, match, min_latents)
    picks, gains, first = coverage_picks(pool_fires, labeled_fires, k, rng)
    inputs.scores = first
    inputs.scores[picks] = gains
    return picks


# images on which latents with overlapping decoder directions fire together; half the batch at random
@register("interference", {"network"})
def _interference(inputs, k, rng, layer: str = "layer4", fit_images: int = 1000, expansion: int = 4,
                  sae_k: int = 4, steps: int = 600, batch_size: int = 512, match: float = 0.9,
                  min_latents: int = 16, random_share: float = 0.5):
    """Fit the round's latent lens as ``latent_coverage`` does, score every unlabelled image by its pair
    interference (the share of its code energy on pairs of used latents, weighted by the pairs' decoder
    |cosine|: ``superlens.active.latents``), and take the ``1 - random_share`` of the batch with the
    largest scores, the rest uniformly at random. The random half keeps the labelled set spread over the
    pool: the highest-scoring images alone are a narrow kind (few latents, strongly overlapping), and a
    batch made only of them would teach the model about little else."""
    from superlens.active.latents import interference_picks

    if not 0.0 <= random_share <= 1.0:
        raise UserError(f"interference: random_share must lie in [0, 1], got {random_share!r}")
    (_, pair), _ = _lens(inputs, rng, layer, fit_images, expansion, sae_k, steps, batch_size, match, min_latents,
                         labeled=False)
    inputs.scores = pair
    return interference_picks(pair, k, random_share, rng)
