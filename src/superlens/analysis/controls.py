"""The psi protocol's controls on a real layer: what it reads where there are no features (the null
floors), and how it responds when known features are added (the planted-feature response).

Arrays in, numbers out, as ``superposition``:

- ``gaussian_null``: vectors with the layer's mean and covariance and no sparse structure,
  ReLU'd as the layer is: psi of these is the floor the covariance alone gives.
- the initialized-network floor is the same protocol on the same images through the same
  architecture at its initial weights (the caller captures those; a study has them as the
  shared round-0 initialization).
- ``planted_response``: K known sparse non-negative directions added to the layer's real
  vectors, each present in a vector with the real latents' median firing frequency and
  with magnitudes of their median active magnitude; for each K, psi, how far it rose per
  planted feature per neuron, and the recall of the planted directions (the fraction that
  a reproduced latent matches at the protocol's cosine threshold, averaged over SAE seeds).
  It says, for this layer at these settings, what change in features the instrument sees.
"""

from __future__ import annotations

import numpy as np

from superlens.analysis.superposition import measure_superposition, unit_rows
from superlens.errors import UserError


def reinitialized(model, seed: int = 0):
    """A copy of ``model`` at fresh initial weights: every submodule that has ``reset_parameters`` (convs,
    linears, norms, whose running statistics restart too) redrawn from ``seed``; parameters of modules
    without it keep their values. Returns (copy, how many parameter tensors kept their values)."""
    import copy

    import torch

    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    reset = set()
    for module in fresh.modules():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            reset.update(id(p) for p in module.parameters(recurse=False))
        if callable(getattr(module, "reset_running_stats", None)):
            module.reset_running_stats()
    kept = sum(id(p) not in reset for p in fresh.parameters())
    return fresh, kept


def floor_verdict(psi: float, psi_sd: float, floor_psi: float, floor_sd: float) -> dict[str, float | bool]:
    """How far psi lies above its initialized-network floor, and whether by more than the SAE-seed spread (the
    larger of the two SDs): below that, psi cannot be told from what the instrument reads where nothing was
    learned."""
    margin = max(float(psi_sd), float(floor_sd))
    above = float(psi) - float(floor_psi)
    return {"above": above, "margin": margin, "clears": bool(above > margin)}


def floor_metrics(floor: dict) -> dict[str, float]:
    """The metrics a study and ``analyze`` report of a floor (its ``psi`` and ``floor_verdict``'s keys)."""
    return {"psi_init_floor": floor["psi"], "psi_above_floor": floor["above"], "psi_clears_floor": float(floor["clears"])}


def gaussian_null(x, seed: int = 0) -> np.ndarray:
    """As many vectors as ``x`` (rows x neurons) drawn from a Gaussian with ``x``'s mean and covariance,
    then ReLU'd: the layer's second-order statistics without any sparse feature."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise UserError(f"gaussian_null needs (rows, neurons) vectors, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False)
    eigval, eigvec = np.linalg.eigh(np.atleast_2d(cov))
    factor = eigvec * np.sqrt(np.clip(eigval, 0.0, None))
    draws = mean + rng.standard_normal((len(x), x.shape[1])) @ factor.T
    return np.maximum(draws, 0.0).astype(np.float32)


def planted_directions(neurons: int, k: int, seed: int = 0, support: float = 0.25) -> np.ndarray:
    """``k`` unit non-negative directions in ``neurons`` dimensions, each on a random ``support`` share of
    the neurons (at least 2)."""
    rng = np.random.default_rng(seed)
    on = max(2, int(round(support * neurons)))
    d = np.zeros((k, neurons))
    for row in d:
        idx = rng.choice(neurons, on, replace=False)
        row[idx] = rng.uniform(0.5, 1.5, on)
    return unit_rows(d)


def plant(x, directions: np.ndarray, frequency: float, magnitude: float, seed: int = 0) -> np.ndarray:
    """``x`` plus each direction, present in a vector with probability ``frequency`` and an exponential
    magnitude of mean ``magnitude``."""
    rng = np.random.default_rng(seed)
    present = rng.random((len(x), len(directions))) < frequency
    codes = present * rng.exponential(magnitude, present.shape)
    return (np.asarray(x, dtype=np.float64) + codes @ directions).astype(np.float32)


def recall(directions: np.ndarray, reproduced: list[np.ndarray], match: float) -> float:
    """Mean over SAE seeds of the fraction of ``directions`` matched by a reproduced decoder row at cosine
    >= ``match``."""
    per_seed = [float(((unit_rows(directions) @ rows.T).max(1) >= match).mean()) if len(rows) else 0.0
                for rows in reproduced]
    return float(np.mean(per_seed)) if per_seed else 0.0


def planted_response(x, labels=None, ks=None, *, plant_seed: int = 0, frequency: float | None = None,
                     magnitude: float | None = None, device=None, base: dict | None = None, **settings) -> dict:
    """psi of ``x`` and of ``x`` with K planted directions for each K in ``ks`` (default N/2 and N).

    ``frequency`` and ``magnitude`` default to the median firing frequency and active magnitude of the
    latents the protocol finds in ``x`` itself; ``plant_seed`` draws the directions and where they are present
    (``settings``, the protocol's, may carry its own ``seed`` for the SAEs). Returns the base measurement's psi and, per K: psi, its
    SAE-seed SD, the rise in psi per planted feature per neuron ((psi_K - psi_0) / (K / N)) and the recall
    of the planted directions. ``base``: the protocol's measurement of ``x`` itself at the same settings,
    with ``details`` (``measure_superposition(..., details=True)``), when the caller has it already."""
    from superlens.specs import SuperpositionSettings

    match = SuperpositionSettings.from_settings(settings).match
    x = np.asarray(x, dtype=np.float32)
    neurons = x.shape[1]
    ks = list(ks) if ks is not None else [max(1, neurons // 2), neurons]
    if base is None or "details" not in base:
        base = measure_superposition(x, labels=labels, device=device, details=True, **settings)
    info = base["details"]
    frequency = info["latent_frequency_median"] if frequency is None else frequency
    magnitude = info["latent_magnitude_median"] if magnitude is None else magnitude
    if not (np.isfinite(frequency) and np.isfinite(magnitude) and frequency > 0 and magnitude > 0):
        raise UserError("planted_response needs a positive frequency and magnitude; the protocol found no live "
                        "latent to copy them from, so pass frequency= and magnitude=")
    rows = []
    for i, k in enumerate(ks):
        directions = planted_directions(neurons, k, seed=plant_seed + 1 + i)
        m = measure_superposition(plant(x, directions, frequency, magnitude, seed=plant_seed + 101 + i), labels=labels,
                                  device=device, details=True, **settings)
        rows.append({"planted": k, "planted_per_neuron": k / neurons, "psi": m["psi"], "psi_sd": m["psi_sd"],
                     "psi_rise_per_planted_per_neuron": (m["psi"] - base["psi"]) / (k / neurons),
                     "recall": recall(directions, m["details"]["reproduced_decoders"], match)})
    return {"psi": base["psi"], "psi_sd": base["psi_sd"], "frequency": float(frequency),
            "magnitude": float(magnitude), "response": rows}


def control_notes(name: str, metrics: dict[str, float]) -> list[str]:
    """Sentences for a layer whose controls say psi is not counting there: psi not above its Gaussian floor,
    or a planted-feature rise under half a feature per planted feature per neuron (a counted feature adds 1)."""
    notes = []
    if "psi_gaussian_floor" in metrics and not metrics["psi"] > metrics["psi_gaussian_floor"]:
        notes.append(f"{name}: psi {metrics['psi']:.3g} is not above its Gaussian floor "
                     f"({metrics['psi_gaussian_floor']:.3g}): vectors with this layer's mean and covariance and no "
                     "sparse feature read as high")
    weak = {key[len("planted_rise_"):]: v for key, v in metrics.items() if key.startswith("planted_rise_") and v < 0.5}
    if weak:
        shown = " and ".join(f"{v:.2f} at K/N = {r}" for r, v in weak.items())
        notes.append(f"{name}: known features planted in this layer's vectors raise psi by {shown} per planted "
                     "feature per neuron (a counted feature adds 1; the bar is 0.5): at these settings the protocol "
                     "undercounts features on this layer; more vectors (sae.max_images) or the library's SAE "
                     "settings (sae.superposition) are what lifts it")
    return notes


def planted_counts(ratios, neurons: int) -> list[int]:
    """K = ratio x ``neurons`` (at least 1) for each ratio, each K once, smallest first."""
    return sorted({max(1, round(float(r) * neurons)) for r in ratios})


def layer_controls(vectors, labels, ratios, *, gaussian: bool = True, plant_seed: int = 0, device=None,
                   base: dict | None = None, log=None, **settings) -> dict:
    """The protocol's controls on one layer's vectors, as a study and ``superlens analyze`` run them, at the
    protocol settings ``settings``: the planted-feature response for K = ratio x neurons of each ratio
    (``planted_response``, its directions and presence drawn from ``plant_seed``; ``base``: the protocol's
    own measurement of ``vectors`` with details, when the caller has it) and, with ``gaussian``, the
    Gaussian floor (psi of ``gaussian_null(vectors, plant_seed)``). Returns {"planted": planted_response's dict or None
    without ratios, "gaussian_floor": its psi, psi_sd, converged and steps, or None}; ``log`` gets a line
    before each."""
    out: dict = {"planted": None, "gaussian_floor": None}
    ks = planted_counts(ratios, vectors.shape[1])
    if ks:
        if log is not None:
            log(f"the planted-feature control ({', '.join(map(str, ks))} directions on {vectors.shape[1]} neurons)")
        out["planted"] = planted_response(vectors, labels, ks, plant_seed=plant_seed, device=device, base=base,
                                          **settings)
    if gaussian:
        if log is not None:
            log("the Gaussian floor (the layer's mean and covariance, ReLU'd)")
        null = measure_superposition(gaussian_null(vectors, seed=plant_seed), labels=labels, device=device, **settings)
        out["gaussian_floor"] = {k: null[k] for k in ("psi", "psi_sd", "converged", "steps")}
    return out


def control_metrics(controls: dict, ratios, neurons: int) -> dict[str, float]:
    """``layer_controls``' result as ``analyze``'s flat layer metrics: ``psi_gaussian_floor``, and per ratio
    asked for, ``planted_rise_<ratio>`` and ``planted_recall_<ratio>``."""
    out = {} if controls["gaussian_floor"] is None else {"psi_gaussian_floor": controls["gaussian_floor"]["psi"]}
    ratio_of = {planted_counts([r], neurons)[0]: float(r) for r in ratios}
    for row in (controls["planted"] or {}).get("response", []):
        ratio = ratio_of[row["planted"]]
        out[f"planted_rise_{ratio:g}"] = row["psi_rise_per_planted_per_neuron"]
        out[f"planted_recall_{ratio:g}"] = row["recall"]
    return out
