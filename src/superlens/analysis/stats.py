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
    """The range of a study metric where it has one: accuracies and the area under the
    accuracy curve (a mean accuracy) lie in [0, 1]."""
    return (0.0, 1.0) if name.endswith("accuracy") or name == "aubc" else None


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
    low, high = t_interval(d, confidence)
    return {
        "difference": float(d.mean()) if len(d) else None,
        "difference_ci95": [none_if_nan(low), none_if_nan(high)],
        "p_value": none_if_nan(paired_test(d, method)),
        "p_adjusted": None,  # filled by ``adjust_family``
        "effect_size": none_if_nan(paired_effect(d)),
        "seeds": seeds,
    }


def adjust_family(block: dict[str, dict], keys: list[str]) -> None:
    """Holm-adjust the p-values of ``keys`` in ``block`` together (one family), in place."""
    keys = [k for k in keys if k in block]
    for key, adjusted in zip(keys, holm([block[k]["p_value"] for k in keys])):
        block[key]["p_adjusted"] = none_if_nan(adjusted)


def _ok(v) -> bool:
    return none_if_nan(v) is not None


def none_if_nan(v: float | None) -> float | None:
    """``v`` as a float, or None where it is missing or not finite (JSON has no NaN)."""
    return float(v) if v is not None and np.isfinite(v) else None
