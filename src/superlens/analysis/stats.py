"""Statistics over seeds: t-intervals of means, paired tests of arms, Holm adjustment.

Seeds are the unit of replication. Arms of one seed share their initial weights,
initial labelled set and round-0 model, so two arms are compared through their
per-seed differences (a paired design), never as two independent samples.

Methods, each with one definition:
    mean_ci           mean +- t(1 - alpha/2, n - 1) * s / sqrt(n): exact coverage for
                      normal data at any n >= 2 (a percentile bootstrap over 3-10 seeds
                      covers far less than its nominal level)
    paired_test       two-sided p of "mean difference = 0" from the per-seed
                      differences: the paired t-test ("t") or the exact sign-flip
                      permutation test ("signflip", all 2^n sign patterns)
    holm              Holm's step-down adjustment of a family of p-values
    paired_effect     d_z = mean(d) / sd(d) with the small-sample correction
                      J = 1 - 3 / (4 (n - 1) - 1) (Hedges' g for paired data)
"""

from __future__ import annotations

from itertools import product

import numpy as np

CI_METHOD = "t-interval over seeds"
TESTS = {"t": "paired t-test over seeds", "signflip": "exact sign-flip permutation test over seeds"}


def finite(values) -> np.ndarray:
    """The finite values (None and NaN dropped) as a float array."""
    x = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return x[np.isfinite(x)]


def t_interval(values, confidence: float = 0.95, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """Student-t interval of the mean; NaN bounds for fewer than 2 values (no spread to estimate).

    ``bounds``: the range the quantity can take (e.g. (0, 1) for an accuracy); the interval
    is cut to it. That loses no coverage: the true mean lies in the range, so it lies in the
    cut interval whenever it lies in the whole one.
    """
    from scipy.stats import t

    x = finite(values)
    if len(x) < 2:
        return (float("nan"), float("nan"))
    half = t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    low, high = float(x.mean() - half), float(x.mean() + half)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return (low, high)


def metric_bounds(name: str) -> tuple[float, float] | None:
    """The range of a study metric where it has one: accuracies, the area under the accuracy curve (a mean
    accuracy) and the share of seeds whose psi clears its floor lie in [0, 1]."""
    return (0.0, 1.0) if name.endswith("accuracy") or name in ("aubc", "psi_clears_floor") else None


def mean_ci(values, confidence: float = 0.95, bounds: tuple[float, float] | None = None) -> dict[str, float | list[float]]:
    """``{"mean", "ci95"}`` of the finite values: the mean and its t-interval (see ``t_interval``)."""
    x = finite(values)
    low, high = t_interval(x, confidence, bounds)
    return {"mean": float(x.mean()) if len(x) else float("nan"), "ci95": [low, high]}


def paired_test(differences, method: str = "t") -> float:
    """Two-sided p-value that the per-seed ``differences`` have mean zero.

    ``t``: paired t-test (exact when the differences are normal). ``signflip``: every
    one of the 2^n sign patterns of the differences is enumerated (exact under
    symmetry, no normality); its smallest attainable p is 2 / 2^n (0.25 at 3 seeds,
    0.0625 at 5, 0.03125 at 6). NaN for fewer than 2 differences; 1 when all are 0.
    """
    d = finite(differences)
    if len(d) < 2:
        return float("nan")
    if method == "t":
        from scipy.stats import t

        sd = d.std(ddof=1)
        if sd == 0:
            return 1.0 if d.mean() == 0 else 0.0
        stat = d.mean() / (sd / np.sqrt(len(d)))
        return float(2 * t.sf(abs(stat), len(d) - 1))
    if method == "signflip":
        if len(d) > 20:
            raise ValueError("signflip enumerates 2^n patterns; use at most 20 differences")
        observed = abs(d.mean())
        tol = 1e-12 * max(1.0, observed)
        signs = np.array(list(product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d / len(d)) >= observed - tol))
    raise ValueError(f"unknown paired test {method!r}; known: {', '.join(TESTS)}")


def smallest_p(n: int, method: str = "t") -> float:
    """The smallest two-sided p-value ``paired_test`` can return with ``n`` seeds (0 for the t-test)."""
    if n < 2:
        return float("nan")
    return 2.0 / 2**n if method == "signflip" else 0.0


def holm(p_values) -> list[float]:
    """Holm step-down adjusted p-values, in the input order; NaN entries stay NaN and do not count."""
    p = np.asarray([np.nan if v is None else v for v in p_values], dtype=float)
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def paired_effect(differences) -> float:
    """Standardized mean of paired differences, small-sample corrected (NaN for n < 3, where J = 0)."""
    d = finite(differences)
    if len(d) < 3:
        return float("nan")
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if d.mean() == 0 else float(np.sign(d.mean()) * np.inf)
    return float(d.mean() / sd * (1 - 3 / (4 * (len(d) - 1) - 1)))


def compare_paired(a: dict[int, float], b: dict[int, float], method: str = "t", confidence: float = 0.95) -> dict:
    """``a`` minus ``b`` over the seeds both have a finite value for: the contract's comparison block."""
    seeds = sorted(s for s in a if s in b and _ok(a[s]) and _ok(b[s]))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    return {
        **_differences(d, method, confidence),
        "p_adjusted": None,  # filled by ``adjust_together``
        "effect_size": none_if_nan(paired_effect(d)),
        "seeds": seeds,
    }


def _differences(d: np.ndarray, method: str, confidence: float) -> dict:
    """Mean of the per-seed differences ``d``, its t-interval and the paired test's p."""
    low, high = t_interval(d, confidence)
    return {"difference": float(d.mean()) if len(d) else None,
            "difference_ci95": [none_if_nan(low), none_if_nan(high)],
            "p_value": none_if_nan(paired_test(d, method))}


def adjust_together(comparisons: list[dict]) -> None:
    """Holm-adjust ``comparisons`` (any mix of arms and metrics: one family) together, in place, and add
    each one's simultaneous interval at the family's Bonferroni level (``difference_ci95_adjusted``):
    when the adjusted p is >= 0.05 that interval contains 0, so words and intervals never disagree."""
    m = sum(c["p_value"] is not None for c in comparisons)
    for comparison, adjusted in zip(comparisons, holm([c["p_value"] for c in comparisons])):
        comparison["p_adjusted"] = none_if_nan(adjusted)
        comparison["difference_ci95_adjusted"] = simultaneous_interval(comparison, m)


def simultaneous_interval(comparison: dict, family_size: int, confidence: float = 0.95) -> list[float | None]:
    """The t-interval of a comparison's difference widened to confidence 1 - (1 - ``confidence``) / m
    (Bonferroni over a family of m comparisons), from its 95% interval and seed count."""
    from scipy.stats import t

    low, high = comparison.get("difference_ci95") or (None, None)
    n, d = len(comparison.get("seeds") or []), comparison.get("difference")
    if low is None or high is None or d is None or n < 2 or family_size < 1:
        return [None, None]
    scale = t.ppf(1 - (1 - confidence) / (2 * family_size), n - 1) / t.ppf(0.5 + confidence / 2, n - 1)
    half = (high - low) / 2 * scale
    return [d - half, d + half]


def _ok(v) -> bool:
    return none_if_nan(v) is not None


def none_if_nan(v: float | None) -> float | None:
    """``v`` as a float, or None where it is missing or not finite (JSON has no NaN)."""
    return float(v) if v is not None and np.isfinite(v) else None


def _curve(accuracies, values) -> tuple[np.ndarray, np.ndarray]:
    """A metric as a function of accuracy: points sorted by accuracy, ties averaged, non-finite dropped."""
    acc, val = np.asarray(accuracies, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(acc) & np.isfinite(val)
    acc, val = acc[keep], val[keep]
    levels, inverse = np.unique(acc, return_inverse=True)
    return levels, np.bincount(inverse, weights=val) / np.bincount(inverse)


def matched_difference(arm: tuple, control: tuple, grid: int = 101) -> tuple[float, tuple[float, float]] | None:
    """Mean over the accuracy range both curves cover of (arm's metric - control's metric), each
    interpolated linearly in accuracy between its rounds; None when the ranges do not overlap."""
    a_acc, a_val = _curve(*arm)
    c_acc, c_val = _curve(*control)
    if len(a_acc) == 0 or len(c_acc) == 0:
        return None
    low, high = max(a_acc[0], c_acc[0]), min(a_acc[-1], c_acc[-1])
    if high < low:
        return None
    points = np.linspace(low, high, grid) if high > low else np.array([low])
    return float(np.mean(np.interp(points, a_acc, a_val) - np.interp(points, c_acc, c_val))), (float(low), float(high))


def accuracy_matched(arm, control, method: str = "t", confidence: float = 0.95) -> dict:
    """The difference of a metric between an arm and its control at equal test accuracy, paired over seeds.

    ``arm``, ``control``: one ``(accuracies, values)`` pair of arrays over rounds per seed,
    paired by position. Per seed, each arm's metric is read as a function of its accuracy
    (rounds sorted by accuracy, linear between them) and the two curves are compared over
    the accuracy range both cover (their mean difference on 101 evenly spaced accuracies).
    A seed whose ranges do not overlap is left out. Returns the mean difference over
    seeds, its t-interval, the paired test's p, the seeds used (positions) and the
    accuracy range (the lowest and highest accuracy compared, over the seeds used).
    """
    if len(arm) != len(control):
        raise ValueError(f"arm and control must have one curve per seed each, got {len(arm)} and {len(control)}")
    per_seed = [matched_difference(a, c) for a, c in zip(arm, control)]
    used = [i for i, r in enumerate(per_seed) if r is not None]
    ranges = [per_seed[i][1] for i in used]
    return {
        **_differences(np.array([per_seed[i][0] for i in used]), method, confidence),
        "seeds": used,
        "accuracy_range": [min(r[0] for r in ranges), max(r[1] for r in ranges)] if ranges else None,
    }


def compare_to_control(per_seed: dict[str, dict[str, list]], control: str = "al-random", headline=None,
                       test: str = "t") -> dict[str, dict[str, dict]]:
    """Every arm minus ``control``, per metric, paired by seed position, with study-wide error control.

    ``per_seed``: ``{arm: {metric: [value per seed]}}``. ``headline``: the metrics of the
    headline family (default: every metric); one Holm adjustment runs over every
    (arm, headline metric) pair of the study, and one over every other pair, so the
    chance of any false positive in a family stays at the nominal level however many
    arms share the control.
    """
    if control not in per_seed:
        raise ValueError(f"the control arm {control!r} is not among {', '.join(per_seed)}")
    base = per_seed[control]
    out: dict[str, dict[str, dict]] = {}
    for arm, metrics in per_seed.items():
        if arm == control:
            continue
        out[arm] = {}
        for metric, values in metrics.items():
            if metric not in base:
                continue
            block = compare_paired(dict(enumerate(values)), dict(enumerate(base[metric])), test)
            block["family"] = "headline" if headline is None or metric in headline else "secondary"
            out[arm][metric] = block
    for family in ("headline", "secondary"):
        adjust_together([v for block in out.values() for v in block.values() if v["family"] == family])
    return out


def _power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with ``n`` seeds for a true mean difference ``effect``
    when the per-seed differences have SD ``sd`` (noncentral t)."""
    from scipy.stats import nct, t

    if n < 2 or sd <= 0:
        return float("nan")
    crit = t.ppf(1 - alpha / 2, n - 1)
    nc = effect / sd * np.sqrt(n)
    power = float(nct.sf(crit, n - 1, nc) + nct.cdf(-crit, n - 1, nc))
    if not np.isfinite(power) and abs(nc) > crit:  # far tails scipy cannot evaluate: the test always rejects
        return 1.0
    return power


def detectable_effect(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest mean difference the paired t-test detects with ``power`` at ``n`` seeds."""
    from scipy.optimize import brentq

    if n < 2 or not np.isfinite(sd) or sd <= 0:
        return float("nan")
    try:
        return float(brentq(lambda e: _power(e, sd, n, alpha) - power, 1e-9 * sd, 15 * sd / np.sqrt(n)))
    except ValueError:  # scipy's noncentral t failed to evaluate on the way (very few seeds)
        return float("nan")


def seeds_needed(effect: float, sd: float, power: float = 0.8, alpha: float = 0.05, most: int = 1000) -> int | None:
    """The fewest seeds with which the paired t-test detects ``effect`` with ``power`` (None beyond ``most``)."""
    if not (np.isfinite(effect) and np.isfinite(sd)) or effect == 0 or sd <= 0:
        return None
    return next((n for n in range(2, most + 1) if _power(abs(effect), sd, n, alpha) >= power), None)
