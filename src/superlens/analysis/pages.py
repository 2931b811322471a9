"""The content of feature pages: for every unit of one layer, its numbers, its top exemplars with
their activation maps, its histograms and the units it is linked to. Pure: arrays in, records out.

A page's units are the layer's neurons (channels) and its SAE's latents (``layer_units``), or a
crosscoder's latents (``crosscoder_units``). Each record:

    id, kind, index      "n12" / "l40", "neuron" / "latent", the channel or latent number
    density, mean        fraction of images on which the unit is active, its mean activation
    class_selectivity    Morcos et al. 2018, on per-image activity; top_class the class it favours
    links                how many units it is linked to (a neuron: live latents that load on it;
                         a latent: neurons it loads on)
    ex                   top exemplars: [image slot, activation, map, ...] (maps as 0..255 on the
                         unit's largest value over its exemplars' maps, row-major, map_shape)
    hist, peak           counts of its non-zero per-image activations in BINS bins over [0, peak]
    top_classes          class counts among its 50 most activating images
    linked               ids of the linked units, strongest first

``images`` lists the dataset rows every slot stands for.
"""

from __future__ import annotations

import numpy as np
import torch

from superlens.analysis.units import decoder_shares, loadings, top_images, unit_table


def _quantized(maps: np.ndarray, top: float | None = None) -> np.ndarray:
    """(k, h, w) maps of one unit as 0..255 of ``top`` (default: their common maximum)."""
    top = maps.max() if top is None else top
    return np.zeros(maps.shape, np.uint8) if top <= 0 else np.clip(np.round(maps / top * 255), 0, 255).astype(np.uint8)


def _pooled(maps: np.ndarray, most: int) -> np.ndarray:
    """(..., h, w) maps averaged down to at most ``most`` x ``most``."""
    size = (min(maps.shape[-2], most), min(maps.shape[-1], most))
    if size == maps.shape[-2:]:
        return np.asarray(maps, np.float32)
    flat = torch.as_tensor(np.asarray(maps, np.float32)).reshape(-1, 1, *maps.shape[-2:])
    return torch.nn.functional.adaptive_avg_pool2d(flat, size).reshape(maps.shape[:-2] + size).numpy()


class _Slots:
    """Dataset rows -> image slots of the page, in first-use order."""

    def __init__(self) -> None:
        self.rows: dict[int, int] = {}

    def __call__(self, row: int) -> int:
        return self.rows.setdefault(int(row), len(self.rows))

    def images(self) -> list[int]:
        return list(self.rows)


def _records(kind: str, prefix: str, table: dict, classes: list[str], values: np.ndarray, tops: np.ndarray,
             maps: list[np.ndarray], slots: _Slots, links: list[list[str]]) -> list[dict]:
    out = []
    for u in range(values.shape[1]):
        live = bool(table["live"][u])
        ex = []
        if live:
            common = max(float(m[u].max()) for m in maps)  # several maps per exemplar: one scale for all
            quantized = [_quantized(m[u], common) for m in maps]
            for i, row in enumerate(tops[u]):
                if values[row, u] <= 0:
                    break
                ex.append([slots(row), round(float(values[row, u]), 5)] + [q[i].reshape(-1).tolist() for q in quantized])
        out.append({"id": f"{prefix}{u}", "kind": kind, "index": u, "live": live,
                    "density": float(table["density"][u]), "mean": float(table["mean"][u]),
                    "class_selectivity": float(table["class_selectivity"][u]),
                    "top_class": classes[int(table["top_class"][u])] if live else "",
                    "links": len(links[u]), "linked": links[u], "ex": ex, "hist": table["hist"][u].tolist(),
                    "peak": float(table["peak"][u]), "top_classes": table["top_classes"][u].tolist()})
    return out


@torch.no_grad()
def layer_units(acts: np.ndarray, sae, labels: np.ndarray, classes: list[str], top: int = 9,
                threshold: float = 0.1, map_side: int = 8) -> dict:
    """Records of the neurons and SAE latents of one layer, from its activations ``acts`` on the page's
    images ((images, C, H, W), or (images, C)) and its decoding SAE. A latent loads on a neuron when
    at least ``threshold`` of its decoder row's energy lies there (``units.loadings``)."""
    from superlens.analysis.sae_measures import image_latents
    from superlens.analysis.sae import conv_vectors

    labels = np.asarray(labels)
    pooled = acts if acts.ndim == 2 else acts.mean(axis=(2, 3))
    latent_values = image_latents(sae, acts)
    neurons, latents = unit_table(pooled, labels), unit_table(latent_values, labels)
    load = loadings(sae.W_dec.detach().cpu().numpy(), latents["live"], threshold)  # (latents, neurons)
    share = decoder_shares(sae.W_dec.detach().cpu().numpy())
    latent_links = [[f"n{i}" for i in np.flatnonzero(load[j])[np.argsort(-share[j, load[j]])]]
                    for j in range(len(load))]
    neuron_links = [[f"l{j}" for j in np.flatnonzero(load[:, i])[np.argsort(-share[load[:, i], i])]]
                    for i in range(load.shape[1])]
    n_top, l_top = top_images(pooled, top), top_images(latent_values, top)
    spatial = acts if acts.ndim == 4 else acts[:, :, None, None]
    n_maps = _pooled(spatial[n_top, np.arange(len(n_top))[:, None]], map_side)  # (neurons, top, h, w)
    # a latent's map on one of its exemplars: its code at each position of that image
    device = sae.W_dec.device
    l_maps = np.zeros(l_top.shape + spatial.shape[2:], np.float32)
    for row in np.unique(l_top):
        units, places = np.nonzero(l_top == row)
        codes = sae.codes(torch.as_tensor(conv_vectors(acts[row : row + 1]), dtype=torch.float32, device=device))
        l_maps[units, places] = codes[:, torch.as_tensor(units, device=device)].T.reshape(-1, *spatial.shape[2:]).cpu().numpy()
    l_maps = _pooled(l_maps, map_side)
    slots = _Slots()
    units = (_records("neuron", "n", neurons, classes, pooled, n_top, [n_maps], slots, neuron_links)
             + _records("latent", "l", latents, classes, latent_values, l_top, [l_maps], slots, latent_links))
    return {"units": units, "images": slots.images(), "map_names": ["activation"], "map_shape": list(n_maps.shape[2:]),
            "loading_threshold": threshold}


def crosscoder_units(acts_a: np.ndarray, acts_b: np.ndarray, cc, labels: np.ndarray, classes: list[str],
                     top: int = 9, map_side: int = 8) -> dict:
    """Records of a crosscoder's latents on paired activations of models A and B (same images, same
    layer shape). A latent's activity on an image is its code averaged over the image's positions;
    each exemplar carries two maps, what the latent writes into A (code x |d_a|) and into B
    (code x |d_b|), on one scale. Extra fields: ``relative_norm``, ``class`` (``crosscoder.classify``)
    and ``exclusivity`` = 2 |relative_norm - 0.5| (1 for a latent of one model only)."""
    from superlens.analysis.crosscoder import classify, crosscoder_codes
    from superlens.analysis.sae import conv_vectors

    labels = np.asarray(labels)
    n = len(acts_a)
    shape = acts_a.shape[2:] if acts_a.ndim == 4 else (1, 1)
    codes = crosscoder_codes(cc, conv_vectors(acts_a), conv_vectors(acts_b)).reshape(n, *shape, -1)
    values = codes.mean(axis=(1, 2))
    table = unit_table(values, labels)
    tops = top_images(values, top)
    na, nb = (x.detach().cpu().numpy() for x in cc.norms())
    per_exemplar = codes[tops, :, :, np.arange(codes.shape[-1])[:, None]]  # (latents, top, h, w)
    maps = [_pooled(per_exemplar * na[:, None, None, None], map_side),
            _pooled(per_exemplar * nb[:, None, None, None], map_side)]
    r = cc.relative_norm()
    kind = classify(r, table["live"])
    slots = _Slots()
    units = _records("latent", "l", table, classes, values, tops, maps, slots, [[] for _ in range(len(r))])
    for u, rec in enumerate(units):
        rec.update(relative_norm=float(r[u]), exclusivity=float(2 * abs(r[u] - 0.5)), **{"class": str(kind[u])})
    return {"units": units, "images": slots.images(), "map_names": ["into A", "into B"],
            "map_shape": list(maps[0].shape[2:])}
