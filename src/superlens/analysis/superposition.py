"""Superposition measured with sparse autoencoders: train on a layer's vectors, measure on others.

Arrays and models in, numbers out; shared by studies and ``superlens analyze``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from superlens.analysis import neurons
from superlens.analysis.sae import train_sae
from superlens.analysis.sae_batched import train_saes
from superlens.analysis.sae_measures import effective_features, matched_decoder_cosine, sae_metrics, spliced_accuracies


def measure_sae(model, layer: str, sae, train_vectors: np.ndarray, test_vectors: np.ndarray, stability: bool, device,
                splice: dict | None = None) -> dict[str, float]:
    """The ``sae_*`` metrics of the decoding SAE ``sae`` (trained on ``train_vectors``) on ``test_vectors``:
    reconstruction and dead latents; with ``stability`` the matched decoders of a second seed trained
    with its settings; with ``splice`` (keyword arguments of ``spliced_accuracies``) the accuracies with
    the layer replaced. psi is measured by ``measure_superposition``, not here."""
    from dataclasses import replace

    sae = sae.to(device)
    m = {f"sae_{k}": v for k, v in sae_metrics(sae, test_vectors).items()}
    if splice is not None:
        m.update({f"sae_{k}": v for k, v in spliced_accuracies(model, layer, sae, device=device, **splice).items()})
    if stability:
        second = train_sae(train_vectors, replace(sae.settings, seed=sae.settings.seed + 10_000), device=device).sae
        m["sae_stability"] = matched_decoder_cosine(sae, second)
    return m


# Keys of measure_superposition's result that a study stores per model (sae.json "metrics"), by their
# summary names: psi_sae_sd is the SD of psi over the SAE seeds of one model.
SUPERPOSITION_KEYS = {"psi": "psi", "psi_sd": "psi_sae_sd", "psi_per_live_neuron": "psi_per_live_neuron",
                      "features_per_neuron": "features_per_neuron",
                      "feature_dimensionality_mean": "feature_dimensionality_mean", "interference": "interference",
                      "stable_fraction": "sae_stable_fraction", "dead_fraction": "superposition_dead_fraction"}


def superposition_metrics(result: dict) -> dict[str, float]:
    """The per-model numbers of a ``measure_superposition`` result, under their summary names."""
    return {name: result[key] for key, name in SUPERPOSITION_KEYS.items()}


def neurons_and_latents(acts: np.ndarray, latents: np.ndarray, labels: np.ndarray, topk: int) -> dict[str, float]:
    """Class selectivity and top-k class entropy of the layer's neurons and of the live SAE latents."""
    out = {}
    for name, values in (("neuron", acts), ("latent", latents)):
        live = values.max(0) > 0
        if not live.any():
            continue
        v = values[:, live]
        out[f"sae_{name}_class_selectivity_mean"] = float(neurons.class_selectivity(v, labels).mean())
        out[f"sae_{name}_topk_class_entropy_mean"] = float(neurons.topk_class_entropy(v, labels, k=topk).mean())
    return out


# --- superposition measured by a protocol that passes the ground-truth bench (docs/superposition.md) ---

def class_centered(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``x`` with each class's mean vector subtracted from its rows: class separation removed."""
    labels = np.asarray(labels)
    out = np.asarray(x, dtype=np.float32).copy()
    for y in np.unique(labels):
        rows = labels == y
        out[rows] -= out[rows].mean(0)
    return out


def unit_rows(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def reproduced(a: np.ndarray, b: np.ndarray, match: float, sim: np.ndarray | None = None) -> np.ndarray:
    """Which rows of ``a`` (decoder directions of one SAE) another SAE ``b`` reproduces: mutual nearest
    neighbours by cosine, at cosine >= ``match``. ``sim``: their cosine matrix, when already computed (a
    torch tensor stays where it is, and so does the answer)."""
    sim = unit_rows(a) @ unit_rows(b).T if sim is None else sim
    best_b, best_a = sim.argmax(1), sim.argmax(0)
    rows = torch.arange(len(sim), device=sim.device) if isinstance(sim, torch.Tensor) else np.arange(len(sim))
    return (best_a[best_b] == rows) & (sim[rows, best_b] >= match)


def feature_dimensionality(w) -> np.ndarray:
    """D_i = |W_i|^2 / sum_j (W_i_hat . W_j)^2 per feature i, a column of ``w`` (neurons x features), as in
    Elhage et al. 2022: 1 for a feature orthogonal to all others, 1/2 for an antipodal pair; 0 for a
    feature of zero norm."""
    w = np.asarray(w, dtype=np.float64)
    norms = np.linalg.norm(w, axis=0)
    unit = w / np.where(norms > 0, norms, 1.0)
    overlap = ((unit.T @ w) ** 2).sum(axis=1)  # includes j = i
    return np.where(norms > 0, norms**2 / np.where(overlap > 0, overlap, 1.0), 0.0)


def interference(w) -> np.ndarray:
    """sum over the other features j of (W_i_hat . W_j)^2, per feature i (a column of ``w``)."""
    w = np.asarray(w, dtype=np.float64)
    norms = np.linalg.norm(w, axis=0)
    unit = w / np.where(norms > 0, norms, 1.0)
    overlap = (unit.T @ w) ** 2
    return overlap.sum(axis=1) - np.diag(overlap)


def weighted_interference(w, frequency) -> float:
    """``interference`` of unit-norm features averaged with weights ``frequency`` (how often each fires)."""
    p = np.asarray(frequency, dtype=np.float64)
    per_feature = interference(unit_rows(np.asarray(w).T).T)
    return float((p * per_feature).sum() / p.sum()) if p.sum() > 0 else float("nan")


@torch.no_grad()
def _codes_summary(sae, x: np.ndarray, gains: np.ndarray | None = None, classes: np.ndarray | None = None,
                   chunk: int = 65536) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean absolute code and firing frequency of each latent on ``x``, and the FVU of the reconstruction;
    with ``gains`` (classes, d), each row's class gains (``classes``: its class index) scale the encoder's
    input and the decoder's output, as in training."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    dev = sae.W_dec.device
    table = None if gains is None else torch.as_tensor(gains, dtype=torch.float32, device=dev)
    activity = torch.zeros(sae.W_dec.shape[0], dtype=torch.float64, device=dev)
    fired = torch.zeros_like(activity)
    err = 0.0
    for i in range(0, len(xt), chunk):
        xb = xt[i : i + chunk].to(dev)
        g = None if table is None else table[torch.as_tensor(classes[i : i + chunk], device=dev)]
        z = sae.encode(xb * sae.scale, g)
        activity += z.abs().sum(0, dtype=torch.float64)
        fired += (z > 0).sum(0, dtype=torch.float64)
        err += float(((xb - sae.decode(z, g) / sae.scale) ** 2).sum())
    total = float(((xt - xt.mean(0)) ** 2).sum())
    n = max(1, len(xt))
    return (activity / n).cpu().numpy(), (fired / n).cpu().numpy(), err / max(total, 1e-30)


def decoder_cosines(decoders: list[np.ndarray], device=None, in_torch: bool | None = None
                    ) -> dict[tuple[int, int], np.ndarray]:
    """The cosine matrix of each pair (i < j) of unit decoder row sets. On the CPU in float64 numpy; on an
    accelerator (``device``; or ``in_torch=True``) as float32 products there, copied back once per pair:
    at 4,096 latents the three matrices of three seeds are about 100 GFLOP in float64 on the host."""
    pairs = [(i, j) for i in range(len(decoders)) for j in range(i + 1, len(decoders))]
    if in_torch is None:
        in_torch = device is not None and torch.device(device).type != "cpu"
    if not in_torch:
        return {(i, j): decoders[i] @ decoders[j].T for i, j in pairs}
    rows = [torch.as_tensor(d, dtype=torch.float32, device=device) for d in decoders]
    return {(i, j): (rows[i] @ rows[j].T).cpu().double().numpy() for i, j in pairs}


def _reproduced_pairs(decoders: list[np.ndarray], live: list[np.ndarray], match: float, sims: dict):
    """(i, j, kept) for each SAE i and each other SAE j: i's live latents (``live[i]``) that j reproduces,
    from the pairs' cosine matrices ``sims`` (``decoder_cosines``)."""
    for i, dec in enumerate(decoders):
        for j, other in enumerate(decoders):
            if j != i:
                sim = sims[(i, j)] if i < j else sims[(j, i)].T
                kept = reproduced(dec, other, match, sim)
                yield i, j, (kept.cpu().numpy() if isinstance(kept, torch.Tensor) else kept) & live[i]


class SettleRule:
    """The protocol's stop rule beyond the loss (``train_saes``' ``rule``): at each window, psi and the
    reproduced fraction are estimated from the decoders and the window's codes (each latent's summed code
    stands for its activity), as the final count computes them; training may stop only once neither mean
    over the SAE seeds moved since the previous window by more than the seeds' SD at this window (the
    measurement's own spread): more steps would then move what is counted less than the seeds disagree."""

    def __init__(self, match: float, neurons: int) -> None:
        self.match, self.neurons, self.previous = match, neurons, None

    def __call__(self, W_dec: torch.Tensor, activity: torch.Tensor) -> tuple[bool, dict]:
        decoders = list(torch.nn.functional.normalize(W_dec.float(), dim=2))
        act = activity.double().cpu().numpy()
        live = [a > 0 for a in act]
        # float32 products where the decoders are; only the kept masks come back to the host
        sims = {(i, j): decoders[i] @ decoders[j].T for i in range(len(decoders)) for j in range(i + 1, len(decoders))}
        psi = [[] for _ in decoders]
        fraction = [[] for _ in decoders]
        for i, _, kept in _reproduced_pairs(decoders, live, self.match, sims):
            psi[i].append(effective_features(activity=act[i][kept]) / self.neurons)
            fraction[i].append(kept.sum() / max(1, live[i].sum()))
        now = {name: (float(np.mean(v)), float(np.std(np.mean(v, axis=1), ddof=1)))
               for name, v in (("psi", psi), ("reproduced", fraction))}
        settled = self.previous is not None and all(abs(now[k][0] - self.previous[k][0]) <= now[k][1] for k in now)
        self.previous = now
        return settled, {"psi": now["psi"][0], "psi_sd": now["psi"][1], "reproduced_fraction": now["reproduced"][0],
                         "reproduced_fraction_sd": now["reproduced"][1], "settled": settled}


def _per_seed_metrics(decoders: list[np.ndarray], summaries: list[tuple], match: float, neurons: int,
                      device=None) -> dict:
    """For each SAE: psi and the dictionary metrics over its latents that each other SAE reproduces,
    averaged over the other SAEs; and psi_all_seeds, psi over the latents that every other SAE reproduces
    (a stricter count, tabulated on the bench beside psi)."""
    per_seed = {k: [] for k in ("psi", "features_per_neuron", "feature_dimensionality_mean", "interference",
                                "stable_fraction", "psi_all_seeds")}
    # decoders are unit rows: one cosine matrix per pair of SAEs, read both ways
    sims = decoder_cosines(decoders, device)
    live = [freq > 0 for _, freq, _ in summaries]
    pairs = list(_reproduced_pairs(decoders, live, match, sims))
    for i, (dec, (activity, freq, _)) in enumerate(zip(decoders, summaries)):
        values = {k: [] for k in per_seed if k != "psi_all_seeds"}
        everywhere = live[i].copy()  # reproduced by every other SAE
        for _, _, kept in (pair for pair in pairs if pair[0] == i):
            everywhere &= kept
            values["psi"].append(effective_features(activity=activity[kept]) / neurons)
            values["features_per_neuron"].append(kept.sum() / neurons)
            values["feature_dimensionality_mean"].append(float(feature_dimensionality(dec[kept].T).mean())
                                                         if kept.any() else float("nan"))
            values["interference"].append(weighted_interference(dec[kept].T, freq[kept]) if kept.any()
                                          else float("nan"))
            values["stable_fraction"].append(kept.sum() / max(1, live[i].sum()))
        for k, v in values.items():
            per_seed[k].append(float(np.mean(v)))
        per_seed["psi_all_seeds"].append(effective_features(activity=activity[everywhere]) / neurons)
    return per_seed


def _details(fit: ProtocolFit, match: float) -> dict:
    """Each seed's reproduced unit decoder rows (by any other seed), and the median firing frequency and
    active magnitude (raw input units) of the live latents over every seed."""
    reproduced_rows, freqs, magnitudes = [], [], []
    for i, (dec, (activity, freq, _)) in enumerate(zip(fit.decoders, fit.summaries)):
        live = freq > 0
        reproduced_rows.append(dec[fit.kept(i, match)])
        freqs.append(freq[live])
        magnitudes.append(activity[live] / freq[live] / float(fit.batch.saes[i].scale))
    freqs, magnitudes = np.concatenate(freqs), np.concatenate(magnitudes)
    return {"reproduced_decoders": reproduced_rows,
            "latent_frequency_median": float(np.median(freqs)) if len(freqs) else float("nan"),
            "latent_magnitude_median": float(np.median(magnitudes)) if len(magnitudes) else float("nan")}


def _mean_finite(values) -> float:
    """Mean of the finite values; NaN (no warning) when there are none (no latent was reproduced)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


@dataclass
class ProtocolFit:
    """The protocol's SAEs on one set of vectors, before anything is counted."""
    x: np.ndarray  # the vectors they saw (subsampled, class-centred)
    batch: object  # train_saes' result
    decoders: list[np.ndarray]  # unit decoder rows per seed
    summaries: list[tuple]  # (activity, firing frequency, FVU) per seed
    live_neurons: int
    classes: np.ndarray | None  # each row's class index when class gains were trained

    @property
    def neurons(self) -> int:
        return self.x.shape[1]

    def kept(self, i: int, match: float) -> np.ndarray:
        """Seed ``i``'s live latents that another seed reproduces (mutual nearest decoders at ``match``)."""
        kept = np.zeros(len(self.decoders[i]), dtype=bool)
        for j, other in enumerate(self.decoders):
            if j != i:
                kept |= reproduced(self.decoders[i], other, match)
        return kept & (self.summaries[i][1] > 0)


def fit_protocol(activations, labels, opts, device=None, progress=None, seed_offset: int = 0) -> ProtocolFit:
    """Train the protocol's ``opts.seeds`` SAEs (seeds ``opts.seed + seed_offset + s``) on ``activations``
    as ``measure_superposition`` does: at most ``opts.max_vectors`` rows, each class's mean removed when
    ``labels`` are given, class gains when ``opts.class_gains``."""
    x = activations.detach().float().cpu().numpy() if isinstance(activations, torch.Tensor) else np.asarray(
        activations, dtype=np.float32)
    if x.ndim != 2:
        from superlens.errors import UserError

        raise UserError(f"activations must be (rows, neurons), got shape {x.shape}; "
                        "flatten positions first (superlens.analysis.sae.conv_vectors)")
    rng = np.random.default_rng(opts.seed)
    if len(x) > opts.max_vectors:
        keep = np.sort(rng.choice(len(x), opts.max_vectors, replace=False))
        x = x[keep]
        labels = None if labels is None else np.asarray(labels)[keep]
    live_neurons = int((x != 0).any(0).sum())  # neurons that ever respond (a dead ReLU unit is 0 everywhere)
    classes = None
    if labels is not None:
        x = class_centered(x, labels)
        if opts.class_gains:
            classes = np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)
    first = opts.seed + seed_offset
    rule = SettleRule(opts.match, x.shape[1]) if opts.settle_rule and opts.seeds >= 2 else None
    batch = train_saes(x, opts.sae_settings(), [first + s for s in range(opts.seeds)], opts.tolerance,
                       opts.window, device=device, progress=progress, classes=classes, tf32=opts.tf32,
                       bf16=opts.bf16, rule=rule)
    decoders = [unit_rows(s.W_dec.detach().cpu().numpy()) for s in batch.saes]
    summaries = [_codes_summary(s, x, None if batch.gains is None else batch.gains[i], classes)
                 for i, s in enumerate(batch.saes)]
    return ProtocolFit(x, batch, decoders, summaries, live_neurons, classes)


def measure_superposition(activations, *, seeds: int | None = None, labels=None, layer_name: str | None = None,
                          device=None, progress=None, details: bool = False, **settings) -> dict:
    """Superposition of a layer's activations by the validated protocol.

    ``activations``: (n, C) array or tensor (rows: images or positions; columns:
    neurons). ``labels``: the class of each row; when given, each class's mean is
    removed first, so class separation does not pass for features. ``seeds`` SAEs
    (default 3) are trained side by side to a convergence rule; a latent counts as a
    feature when another seed's SAE reproduces it (mutual nearest decoder directions,
    cosine >= ``match``). Per seed: psi = exp(entropy of the reproduced latents' activity
    shares) / C, the effective number of features per neuron; the returned psi is the
    mean over seeds and ``psi_sd`` its SD over seeds. ``settings``: any field of
    ``SuperpositionSettings`` (k, expansion, max_steps, tolerance, match, ...).
    ``details``: also return, under ``"details"``, each seed's reproduced decoder
    directions and the median firing frequency and active magnitude (in the input's
    units) of its live latents (what ``analysis.controls`` plants features like).
    """
    from superlens.specs import SuperpositionSettings

    opts = SuperpositionSettings.from_settings({**settings, **({"seeds": seeds} if seeds is not None else {})})
    fit = fit_protocol(activations, labels, opts, device=device, progress=progress)
    batch, summaries, neurons, live_neurons = fit.batch, fit.summaries, fit.neurons, fit.live_neurons
    per_seed = _per_seed_metrics(fit.decoders, summaries, opts.match, neurons, batch.saes[0].W_dec.device)
    psi = np.array(per_seed["psi"])
    extra = {"details": _details(fit, opts.match)} if details else {}
    return {**extra,
        "psi": float(psi.mean()), "psi_sd": float(psi.std(ddof=1)) if len(psi) > 1 else 0.0,
        "psi_per_seed": psi.tolist(),
        "psi_per_live_neuron": float(psi.mean() * neurons / live_neurons) if live_neurons else float("nan"),
        "live_neurons": live_neurons,
        **{k: _mean_finite(v) for k, v in per_seed.items() if k != "psi"},
        "dead_fraction": float(np.mean([(f == 0).mean() for _, f, _ in summaries])),
        "fvu": float(np.mean([fvu for _, _, fvu in summaries])),
        "converged": batch.converged, "steps": batch.steps, "expansion": opts.expansion, "k": opts.k,
        "seeds": opts.seeds, "neurons": neurons, "vectors": len(fit.x), "class_centered": labels is not None,
        "class_gains": fit.classes is not None, "precision": batch.precision, "settle_trace": batch.trace,
        "layer": layer_name,
    }
