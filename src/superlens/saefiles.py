"""Trained sparse autoencoders on disk, so they can be reloaded, inspected and reused.

One SAE is a folder ``sae-<layer>/`` beside what it was trained for (a study's job folder, or
an analysed model's folder):

    sae.safetensors   W_enc (d x L), W_dec (L x d), b_enc (L), b_dec (d), scale (the input scale)
    cfg.json          layer, dim, latents, pooled, input_scale, the training settings (kind,
                      expansion, k or l1, seed, steps, ...), the training vectors' count and the
                      model's fingerprint (a digest of its parameters and buffers; for a study
                      also model_sha256, the model file's hash)

``load_sae(folder)`` gives back the module: ``sae.codes(x)`` encodes raw activations of that
layer (channel vectors, one per position of a conv layer), ``sae(x)`` reconstructs them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from superlens.errors import UserError
from superlens.fileio import read_json, write_bytes, write_json

FORMAT = 1


def sae_folder(root: Path, layer: str) -> Path:
    return Path(root) / f"sae-{layer}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A digest of the model's parameters and buffers (names, shapes, values): the same weights, the same digest."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().reshape(-1).contiguous()  # 1-D: a 0-dim counter cannot be viewed as bytes
        h.update(f"{name}:{tuple(tensor.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sae_identity(layer: str, pooled: bool, settings, fingerprint: str, vectors: int,
                 images_sha256: str | None = None) -> dict[str, Any]:
    """What a kept SAE must match to be reused: the layer, the vectors it was trained on (their count,
    and the hash of their images' ids when known), the settings and the model's weights."""
    identity = {"layer": layer, "pooled": bool(pooled), "settings": asdict(settings), "model_fingerprint": fingerprint,
                "train_vectors": int(vectors)}
    if images_sha256 is not None:
        identity["images_sha256"] = images_sha256
    return identity


def save_sae(sae, folder: Path, identity: dict[str, Any], **extra: Any) -> Path:
    """``sae`` and its cfg.json (``identity`` plus ``extra``) into ``folder``; the weights first, the cfg last,
    so a folder with a cfg.json is complete."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in sae.state_dict().items()}
    write_bytes(folder / "sae.safetensors", save(tensors))
    write_json(folder / "cfg.json", {"format": FORMAT, **identity, "dim": int(sae.W_dec.shape[1]),
                                     "latents": int(sae.W_dec.shape[0]), "input_scale": float(sae.scale), **extra})
    return folder


def load_sae(folder: str | Path, device=None):
    """The SAE kept in ``folder`` (``sae-<layer>/``), in eval mode on ``device`` (default CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from superlens.analysis.sae import SparseAutoencoder
    from superlens.specs import SAESettings

    folder = Path(folder)
    if not (folder / "cfg.json").exists() or not (folder / "sae.safetensors").exists():
        raise UserError(f"{folder} holds no saved SAE (sae.safetensors and cfg.json); SAEs are saved by a "
                        "study's sae stage, superlens analyze, or superlens browse")
    cfg = read_json(folder / "cfg.json")
    try:
        tensors = load_file(str(folder / "sae.safetensors"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{folder / 'sae.safetensors'} is not a readable safetensors file ({exc}); delete "
                        f"{folder} and rerun to train it again") from None
    known = {f.name for f in fields(SAESettings)}
    settings = SAESettings(**{k: v for k, v in cfg.get("settings", {}).items() if k in known})
    expected = {"W_enc": (cfg["dim"], cfg["latents"]), "W_dec": (cfg["latents"], cfg["dim"]), "b_enc": (cfg["latents"],),
                "b_dec": (cfg["dim"],), "scale": ()}
    got = {k: tuple(t.shape) for k, t in tensors.items()}
    if got != expected:
        raise UserError(f"{folder / 'sae.safetensors'} holds tensors {got}, but its cfg.json says {expected}; "
                        f"delete {folder} and rerun")
    sae = SparseAutoencoder(cfg["dim"], cfg["latents"], settings, torch.Generator().manual_seed(0))
    sae.load_state_dict(tensors)
    sae.cfg = cfg
    return sae.eval().to(device or "cpu")


def kept_sae(folder: Path, identity: dict[str, Any], device=None):
    """The SAE in ``folder`` when it was trained for exactly ``identity``, else None (nothing there, or
    another model, layer or setting: it is then trained again and replaced)."""
    cfg_path = Path(folder) / "cfg.json"
    if not cfg_path.exists():
        return None
    try:
        cfg = read_json(cfg_path)
    except UserError:
        return None
    same = {k: cfg.get(k) for k in identity} == _plain(identity)
    return load_sae(folder, device) if same else None


def kept_or_trained(folder: Path, identity: dict[str, Any], train, device=None, **extra: Any):
    """The SAE kept in ``folder`` for ``identity``, or else ``train()``'s, saved there (``extra`` in its cfg.json)."""
    kept = kept_sae(folder, identity, device)
    if kept is not None:
        return kept
    sae = train()
    save_sae(sae, folder, identity, **extra)
    return sae


def _plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples as lists)."""
    import json

    return json.loads(json.dumps(obj))
