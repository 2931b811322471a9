"""Three questions about how the choice of data can change superposition, asked where the features are
known. In the toy model (``superlens.toy.model``) a feature is an input coordinate, so what a selection
rule does to the data and what the trained W does with it can both be read exactly.

- ``composition_mediation``: does a rule act on W's geometry only through the feature frequencies (or the
  co-occurrences) of the data it yields? Each rule's subset is set beside fresh data matched to it.
- ``memorisation_curve``: with few data points a model can store the points rather than the features
  (Henighan et al. 2023); how many dimensions go to points and how many to features as the data set
  grows, for random and for uncertainty-selected data of the same size.
- ``lens_strategies``: the toy counterparts of ``latent_coverage`` and ``interference``
  (``superlens.active.latents``) where features are known: does coverage even out the frequencies of the
  features the model represents, and does interference-targeting lower the overlap of the pairs it
  targets?

Every answer is a trained model's, so each is read against how far two random data sets of the same
size move the same number (the A/A spread), never against zero.
"""

from __future__ import annotations

import numpy as np
import torch

from superlens.active.latents import coverage_picks, interference_picks, pair_interference
from superlens.analysis.superposition import feature_dimensionality
from superlens.toy.model import ToyModel, importance_error, sparse_batch, train_toy

RULES = ("uncertainty", "coverage", "interference")
GEOMETRY = ("dims_per_feature", "represented", "mean_interference")


def overlap_matrix(w: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """|cos| between the directions of the represented features (norm > ``threshold``), zero diagonal,
    zero rows and columns for the others: what a toy SAE's reproduced latents would show."""
    norms = np.linalg.norm(w, axis=0)
    unit = w / np.where(norms > 0, norms, 1.0)
    overlap = np.abs(unit.T @ unit)
    keep = norms > threshold
    overlap *= keep[:, None] & keep[None, :]
    np.fill_diagonal(overlap, 0.0)
    return overlap


def select(rule: str, x: torch.Tensor, first: torch.Tensor, rest: torch.Tensor, k: int, scout: ToyModel | None,
           importance: torch.Tensor, rng: np.random.Generator, random_share: float = 0.5) -> torch.Tensor:
    """``k`` indices of ``x`` from ``rest`` by a rule's toy counterpart, given the labelled ``first`` and a
    ``scout`` trained on it: ``uncertainty`` the inputs the scout reconstructs worst; ``coverage`` the
    greedy picks that even out how many labelled inputs carry each feature (the features themselves play
    the reproduced latents); ``interference`` half the inputs whose energy falls most on co-active
    features the scout overlaps, half at random."""
    if rule == "uncertainty":
        return rest[importance_error(scout, x[rest], importance).argsort(descending=True)[:k]]
    if rule == "coverage":
        picks, _, _ = coverage_picks((x[rest] > 0).numpy(), (x[first] > 0).numpy(), k, rng)
        return rest[torch.from_numpy(picks)]
    if rule == "interference":
        overlap = torch.as_tensor(overlap_matrix(scout.w), dtype=torch.float32)
        pair = pair_interference(x[rest][:, None, :], overlap).numpy().astype(np.float64)
        return rest[torch.from_numpy(interference_picks(pair, k, random_share, rng))]
    raise ValueError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")


def matched_inputs(subset: torch.Tensor, count: int, generator: torch.Generator,
                   keep_cooccurrence: bool = False) -> torch.Tensor:
    """``count`` fresh inputs matched to ``subset``'s composition. Which features are on: each independently
    with its frequency in the subset, or (``keep_cooccurrence``) a subset row's on/off pattern drawn whole,
    which keeps every co-occurrence of the subset in expectation. The value of an on feature: one of that
    feature's own values in the subset, drawn at random. Only the composition is kept: which inputs
    carried which values together is not."""
    on = subset > 0
    if keep_cooccurrence:
        support = on[torch.randint(len(subset), (count,), generator=generator)]
    else:
        support = torch.rand(count, subset.shape[1], generator=generator) < on.float().mean(0)
    out = torch.zeros(count, subset.shape[1])
    for i in range(subset.shape[1]):
        values, cells = subset[on[:, i], i], support[:, i].nonzero().squeeze(1)
        if len(values) and len(cells):
            out[cells, i] = values[torch.randint(len(values), (len(cells),), generator=generator)]
    return out


def composition_mediation(n: int = 20, m: int = 5, sparsity: float = 0.9, pool: int = 8000, budget: int = 800,
                          initial: int = 200, steps: int = 2000, seeds=(0, 1, 2), rules=RULES) -> dict:
    """Train on each rule's selected subset, on fresh data matched to the subset's feature frequencies, on
    fresh data matched to its co-occurrences, on a random subset of the same size and on a second one (A/A).

    Per seed the models share their initial weights (paired, as a study's arms are). For each rule and
    geometry number: ``effect`` = mean over seeds of (selected - random); ``residual_frequencies`` and
    ``residual_cooccurrence`` = mean of (selected - matched); ``spread`` = the root mean square of
    (random@2 - random), how far two random data sets move the number. Verdict: ``no effect`` when
    |effect| <= 2 spread; else ``mediated by frequencies`` when that residual is within 2 spread; else
    ``mediated by co-occurrence`` when that one is; else ``not mediated``.
    """
    importance = torch.as_tensor(0.7 ** np.arange(n), dtype=torch.float32)
    per_seed = []
    for seed in seeds:
        generator, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
        x = sparse_batch(pool, n, sparsity, generator)
        perm = torch.randperm(pool, generator=generator)
        first, rest = perm[:initial], perm[initial:]

        def fit(data: torch.Tensor) -> dict:
            return train_toy(n, m, sparsity, steps=steps, seed=seed, data=data).summary()

        scout = train_toy(n, m, sparsity, steps=steps, seed=seed, data=x[first])
        models = {"random": fit(x[perm[:budget]]), "random@2": fit(x[perm[budget : 2 * budget]])}
        for rule in rules:
            subset = x[torch.cat([first, select(rule, x, first, rest, budget - initial, scout, importance, rng)])]
            models[rule] = fit(subset)
            models[f"{rule}|frequencies"] = fit(matched_inputs(subset, budget, generator))
            models[f"{rule}|cooccurrence"] = fit(matched_inputs(subset, budget, generator, keep_cooccurrence=True))
        per_seed.append(models)

    def mean_diff(a: str, b: str, key: str) -> float:
        return float(np.mean([s[a][key] - s[b][key] for s in per_seed]))

    answers = {}
    for rule in rules:
        answers[rule] = {}
        for key in GEOMETRY:
            spread = float(np.sqrt(np.mean([(s["random@2"][key] - s["random"][key]) ** 2 for s in per_seed])))
            row = {"effect": mean_diff(rule, "random", key), "spread": spread,
                   "residual_frequencies": mean_diff(rule, f"{rule}|frequencies", key),
                   "residual_cooccurrence": mean_diff(rule, f"{rule}|cooccurrence", key)}
            row["verdict"] = mediation_verdict(row)
            answers[rule][key] = row
    return {"settings": {"n": n, "m": m, "sparsity": sparsity, "pool": pool, "budget": budget, "initial": initial,
                         "steps": steps, "seeds": list(seeds)}, "answers": answers, "per_seed": per_seed}


def mediation_verdict(row: dict) -> str:
    """The verdict rule of ``composition_mediation`` on one (effect, residuals, spread) row."""
    bound = 2 * row["spread"]
    if abs(row["effect"]) <= bound:
        return "no effect"
    if abs(row["residual_frequencies"]) <= bound:
        return "mediated by frequencies"
    if abs(row["residual_cooccurrence"]) <= bound:
        return "mediated by co-occurrence"
    return "not mediated"


def point_dimensionality(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """D_t = |h_t|^2 / sum_s (h_t_hat . h_s)^2 of each data point's hidden vector h_t = W x_t: the feature
    dimensionality's formula with points in place of features. The sum over s is h_t_hat' G h_t_hat with
    G = sum_s h_s h_s' (m x m), so no points x points matrix is formed."""
    h = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    norms = np.linalg.norm(h, axis=1)
    unit = h / np.where(norms > 0, norms, 1.0)[:, None]
    shared = np.einsum("ti,ij,tj->t", unit, h.T @ h, unit)
    return np.where(norms > 0, norms**2 / np.where(shared > 0, shared, 1.0), 0.0)


def unit_sparse_inputs(count: int, n: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """Sparse inputs scaled to unit norm (an input with no feature on is redrawn), so no point is larger
    than another and storing a point costs the same for every point."""
    x = sparse_batch(count, n, sparsity, generator)
    empty = (x > 0).sum(1) == 0
    while empty.any():
        x[empty] = sparse_batch(int(empty.sum()), n, sparsity, generator)
        empty = (x > 0).sum(1) == 0
    return x / x.norm(dim=1, keepdim=True)


def memorisation_curve(sizes=(10, 40, 160, 640, 2560), n: int = 200, m: int = 2, sparsity: float = 0.98,
                       steps: int = 1000, lr: float = 1e-2, weight_decay: float = 1e-2, seeds=(0,),
                       pool_factor: int = 4) -> dict:
    """The dimensions a model gives to data points and to features as its training set grows.

    n features of equal importance, m hidden dimensions, unit-norm sparse inputs. For each size T: a random
    set of T points, and an uncertainty-selected one of the same size (T/2 at random, the rest the inputs of
    a ``pool_factor`` x T pool that a model trained on those reconstructs worst). For each trained W the
    dimensionalities of the features (D_i, over W's columns) and of the training points (D_t, over their
    hidden vectors, ``point_dimensionality``). Their sums over all items are close to m in every regime
    (any arrangement that spreads over the m dimensions gives that), so what tells the regimes apart is
    how much of the m dimensions the m largest items hold: ``feature_dims_top`` and ``point_dims_top``.
    Points in superposition: the top points hold as much as the top features or more; features: the top
    features hold far more (Henighan et al. 2023 describe the change from one to the other as T grows).
    """
    importance = torch.ones(n)
    rows = []
    for seed in seeds:
        for size in sizes:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + size)
            x = unit_sparse_inputs(pool_factor * size, n, sparsity, generator)
            half = size // 2
            scout = train_toy(n, m, sparsity, importance, steps=steps, batch=half, lr=lr, seed=seed, data=x[:half],
                              weight_decay=weight_decay)
            worst = importance_error(scout, x[size:], importance).argsort(descending=True)[: size - half] + size
            for arm, data in (("random", x[:size]), ("uncertainty", x[torch.cat([torch.arange(half), worst])])):
                model = train_toy(n, m, sparsity, importance, steps=steps, batch=size, lr=lr, seed=seed, data=data,
                                  weight_decay=weight_decay)
                features, points = feature_dimensionality(model.w), point_dimensionality(model.w, data.numpy())
                rows.append({"seed": seed, "size": size, "arm": arm,
                             "feature_dims": float(features.sum()), "point_dims": float(points.sum()),
                             "feature_dims_top": float(np.sort(features)[-m:].sum()),
                             "point_dims_top": float(np.sort(points)[-m:].sum()),
                             "active_per_point": float((data > 0).sum(1).float().mean()), "loss": model.loss})
    return {"settings": {"n": n, "m": m, "sparsity": sparsity, "steps": steps, "lr": lr, "weight_decay": weight_decay,
                         "seeds": list(seeds), "pool_factor": pool_factor}, "rows": rows}


def evenness(counts: np.ndarray) -> float:
    """exp(entropy) / len of a frequency profile: 1 when every feature is equally frequent."""
    p = np.asarray(counts, np.float64)
    p = p[p > 0] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()) / len(counts)) if len(p) else 0.0


def lens_strategies(n: int = 20, m: int = 5, pool: int = 8000, budget: int = 800, initial: int = 200,
                    steps: int = 2000, seeds=(0, 1, 2), pairs: int = 5, rare_from: float = 0.3,
                    rare_to: float = 0.01, sparsity: float = 0.9) -> dict:
    """The two lens strategies where features are known, each against a random subset of the same size.

    Coverage: features of equal importance whose frequencies fall geometrically from ``rare_from`` to
    ``rare_to``; reported per arm: the evenness of the labelled set's feature frequencies, how many features
    the trained model represents, and how many of the rarer half it represents.
    Interference: the usual inputs (sparsity ``sparsity``, importances 0.7^i); the targeted pairs are the
    ``pairs`` most overlapping pairs of features the scout represents; reported per pair: how often the pair
    is on together in each arm's data, and the pair's |cos| in each arm's trained model.
    """
    coverage_rows, pair_rows = [], []
    frequencies = torch.as_tensor(np.geomspace(rare_from, rare_to, n), dtype=torch.float32)
    equal = torch.ones(n)
    importance = torch.as_tensor(0.7 ** np.arange(n), dtype=torch.float32)
    for seed in seeds:
        generator, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
        perm = torch.randperm(pool, generator=generator)
        first, rest = perm[:initial], perm[initial:]

        x = torch.rand(pool, n, generator=generator) * (torch.rand(pool, n, generator=generator) < frequencies)
        chosen = torch.cat([first, select("coverage", x, first, rest, budget - initial, None, equal, rng)])
        for arm, ids in (("random", perm[:budget]), ("coverage", chosen)):
            model = train_toy(n, m, 0.0, equal, steps=steps, seed=seed, data=x[ids])
            on = model.norms > 0.5
            coverage_rows.append({"seed": seed, "arm": arm, "evenness": evenness((x[ids] > 0).sum(0).numpy()),
                                  "represented": int(on.sum()), "rare_represented": int(on[n // 2 :].sum())})

        x = sparse_batch(pool, n, sparsity, generator)
        scout = train_toy(n, m, sparsity, steps=steps, seed=seed, data=x[first])
        overlap = overlap_matrix(scout.w)
        upper = np.triu_indices(n, 1)
        order = np.argsort(-overlap[upper], kind="stable")[:pairs]
        targeted = [(int(upper[0][o]), int(upper[1][o])) for o in order if overlap[upper][o] > 0]
        chosen = torch.cat([first, select("interference", x, first, rest, budget - initial, scout, importance, rng)])
        trained = {arm: (train_toy(n, m, sparsity, steps=steps, seed=seed, data=x[ids]), x[ids])
                   for arm, ids in (("random", perm[:budget]), ("interference", chosen))}
        for i, j in targeted:
            row = {"seed": seed, "pair": [i, j], "scout_overlap": float(overlap[i, j])}
            for arm, (model, data) in trained.items():
                row[f"{arm}_cofire"] = float(((data[:, i] > 0) & (data[:, j] > 0)).float().mean())
                row[f"{arm}_overlap"] = float(overlap_matrix(model.w, threshold=0.0)[i, j])
            pair_rows.append(row)

    diffs = np.array([r["interference_overlap"] - r["random_overlap"] for r in pair_rows])
    return {"settings": {"n": n, "m": m, "pool": pool, "budget": budget, "initial": initial, "steps": steps,
                         "seeds": list(seeds), "pairs": pairs, "frequencies": [rare_from, rare_to], "sparsity": sparsity},
            "coverage": coverage_rows, "interference": pair_rows,
            "interference_summary": {"pairs": len(diffs), "mean_difference": float(diffs.mean()) if len(diffs) else 0.0,
                                     "lower": int((diffs < 0).sum()),
                                     "sign_test_p": sign_test(int((diffs < 0).sum()), int((diffs != 0).sum()))}}


def sign_test(successes: int, trials: int) -> float:
    """Two-sided exact sign test: the probability under p = 1/2 of a count at least as far from trials / 2."""
    if trials == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(successes, trials, 0.5).pvalue)
