"""Model diffing with a crosscoder: one sparse dictionary shared by two models, a decoder per model.

Two models A and B see the same images; their activations at one layer, taken at the same
positions, form paired vectors (a, b). Each model's vectors are first scaled by one constant so
that their mean squared norm equals their dimension. Then

    pre   = (a - b_dec_a) W_enc_a + (b - b_dec_b) W_enc_b + b_enc
    z     = BatchTopK(ReLU(pre)): over a batch of B pairs the k * B largest values of
            ReLU(pre_j) * (|d_a_j| + |d_b_j|) are kept (at inference: those above a threshold,
            the running mean of the smallest kept value in training)
    a_hat = z W_dec_a + b_dec_a,   b_hat = z W_dec_b + b_dec_b
    loss  = |a - a_hat|^2 + |b - b_hat|^2

A latent's two decoder rows are kept at unit norm together (|d_a|^2 + |d_b|^2 = 1), so how
much it writes into each model is a split of one budget: a decoder row that serves its model's
reconstruction grows, and the other shrinks as the pair is renormalized. Latents that stop
firing are revived by an auxiliary loss, as the decoding SAE's are. The relative decoder norm
r_j = |d_b_j| / (|d_a_j| + |d_b_j|) sorts the latents that fire on the evaluation pairs: ``a_only`` r < 0.1, ``b_only`` r > 0.9, ``shared``
0.4 <= r <= 0.6, ``other`` in between. The two decoders of a latent start with independent
directions and independently drawn norms, so a balanced latent (r near 0.5) is learned, not
inherited from the start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from superlens.errors import UserError

THRESHOLDS = {"a_only_below": 0.1, "b_only_above": 0.9, "shared_within": (0.4, 0.6)}


@dataclass(frozen=True)
class CrosscoderSettings:
    expansion: int = 4  # latents = expansion x the larger of the two models' dimensions
    k: int = 4  # active latents per pair, on average over a batch (BatchTopK); the psi protocol's k
    steps: int = 3000
    batch_size: int = 1024
    lr: float = 1e-3
    aux_k: int = 64  # dead latents the auxiliary loss uses
    aux_coef: float = 1 / 32
    dead_after: int = 200_000  # pairs without firing before a latent counts as dead
    seed: int = 0


class Crosscoder(nn.Module):
    def __init__(self, dim_a: int, dim_b: int, latents: int, k: int, generator: torch.Generator) -> None:
        super().__init__()
        self.k = k

        def decoder(dim: int) -> torch.Tensor:
            rows = F.normalize(torch.randn(latents, dim, generator=generator), dim=1)
            return rows * (0.5 + torch.rand(latents, 1, generator=generator))  # norms 0.5..1.5, drawn per model

        self.W_dec_a, self.W_dec_b = nn.Parameter(decoder(dim_a)), nn.Parameter(decoder(dim_b))
        self.normalize_decoders()
        self.W_enc_a = nn.Parameter(self.W_dec_a.data.T.clone() / dim_a ** 0.5)
        self.W_enc_b = nn.Parameter(self.W_dec_b.data.T.clone() / dim_b ** 0.5)
        self.b_enc = nn.Parameter(torch.zeros(latents))
        self.b_dec_a, self.b_dec_b = nn.Parameter(torch.zeros(dim_a)), nn.Parameter(torch.zeros(dim_b))
        self.register_buffer("scale_a", torch.ones(()))
        self.register_buffer("scale_b", torch.ones(()))
        self.register_buffer("threshold", torch.zeros(()))

    @torch.no_grad()
    def normalize_decoders(self) -> None:
        """Each latent's two decoder rows together at unit norm: |d_a|^2 + |d_b|^2 = 1."""
        joint = (self.W_dec_a.norm(dim=1) ** 2 + self.W_dec_b.norm(dim=1) ** 2).sqrt().clamp_min(1e-12)[:, None]
        self.W_dec_a.data /= joint
        self.W_dec_b.data /= joint

    def norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.W_dec_a.norm(dim=1), self.W_dec_b.norm(dim=1)

    def relative_norm(self) -> np.ndarray:
        na, nb = self.norms()
        return (nb / (na + nb).clamp_min(1e-12)).detach().cpu().numpy()

    def _scores(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = (a - self.b_dec_a) @ self.W_enc_a + (b - self.b_dec_b) @ self.W_enc_b + self.b_enc
        na, nb = self.norms()
        act = F.relu(pre)
        return act, act * (na + nb)

    def encode_batch(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training codes of a batch of (scaled) pairs, the smallest kept score, and ReLU(pre)."""
        act, score = self._scores(a, b)
        keep = min(self.k * len(a), score.numel())
        flat = score.flatten()
        kept = flat.topk(keep).indices
        mask = torch.zeros_like(flat).scatter_(0, kept, 1.0).view_as(score)
        return act * mask, flat[kept].min(), act

    def encode(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Codes of (scaled) pairs at inference: each latent whose score passes the learned threshold."""
        act, score = self._scores(a, b)
        return act * (score > self.threshold)

    def codes(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Codes of raw (unscaled) paired vectors."""
        return self.encode(a * self.scale_a, b * self.scale_b)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z @ self.W_dec_a + self.b_dec_a, z @ self.W_dec_b + self.b_dec_b


def _scale(x: torch.Tensor) -> float:
    return float(np.sqrt(x.shape[1] / max(float((x * x).sum(1).mean()), 1e-12)))


def train_crosscoder(a, b, settings: CrosscoderSettings = CrosscoderSettings(), device=None,
                     progress=None) -> Crosscoder:
    """A crosscoder on paired vectors ``a`` (n x d_a) and ``b`` (n x d_b), row i of each from the same image
    and position. Latents that have not fired for ``dead_after`` pairs are revived as the decoding
    SAE's are: the top ``aux_k`` of them per pair must reconstruct both models' residuals (weight
    ``aux_coef``). ``progress(step, loss, eta_seconds)`` every 250 steps."""
    import time

    device = torch.device(device) if device is not None else torch.device("cpu")
    a = torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float32, device=device)
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b) or len(a) < 2:
        raise UserError(f"a crosscoder needs two 2-D arrays with the same number (>= 2) of rows, got shapes "
                        f"{tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise UserError("crosscoder input has NaN or inf values")
    generator = torch.Generator().manual_seed(settings.seed)
    latents = settings.expansion * max(a.shape[1], b.shape[1])
    cc = Crosscoder(a.shape[1], b.shape[1], latents, min(settings.k, latents), generator).to(device)
    cc.scale_a.fill_(_scale(a))
    cc.scale_b.fill_(_scale(b))
    a, b = a * cc.scale_a, b * cc.scale_b
    with torch.no_grad():
        cc.b_dec_a.copy_(a.mean(0))
        cc.b_dec_b.copy_(b.mean(0))
    optimizer = torch.optim.Adam(cc.parameters(), lr=settings.lr)
    draws = torch.Generator(device=device).manual_seed(settings.seed)
    batch = min(settings.batch_size, len(a))
    losses = torch.zeros(settings.steps, device=device)
    threshold = torch.zeros((), device=device)
    since_fired = torch.zeros(latents, device=device)
    k_aux = min(settings.aux_k, latents)
    host_checks = device.type == "cpu"  # as in train_sae: asking costs nothing on the CPU, a sync on a GPU
    started = time.perf_counter()
    for step in range(settings.steps):
        idx = torch.randint(len(a), (batch,), generator=draws, device=device)
        xa, xb = a[idx], b[idx]
        z, smallest, act = cc.encode_batch(xa, xb)
        ya, yb = cc.decode(z)
        ra, rb = xa - ya, xb - yb
        loss = (ra * ra).sum(1).mean() + (rb * rb).sum(1).mean()
        since_fired = torch.where((z > 0).any(0), torch.zeros_like(since_fired), since_fired + len(xa))
        dead = since_fired >= settings.dead_after
        if not host_checks or dead.any():
            # the top dead latents of each pair must explain both residuals: a dead latent gets gradient again
            vals, j = torch.where(dead, act, torch.zeros_like(act)).topk(k_aux, dim=1)
            z_aux = torch.zeros_like(act).scatter_(1, j, vals)
            ea, eb = z_aux @ cc.W_dec_a, z_aux @ cc.W_dec_b
            ra, rb = ra.detach(), rb.detach()
            aux = (((ra - ea) ** 2).sum(1).mean() + ((rb - eb) ** 2).sum(1).mean()) / (
                (ra * ra).sum(1).mean() + (rb * rb).sum(1).mean()).clamp_min(1e-12)
            loss = loss + settings.aux_coef * aux * dead.any()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        cc.normalize_decoders()
        threshold = 0.99 * threshold + 0.01 * smallest.detach() if step else smallest.detach()
        losses[step] = loss.detach()
        if progress is not None and (step + 1) % 250 == 0:
            rate = (time.perf_counter() - started) / (step + 1)
            progress(step + 1, float(losses[step - 249 : step + 1].mean()), rate * (settings.steps - step - 1))
    cc.threshold.fill_(float(threshold))
    return cc.eval()


@torch.no_grad()
def crosscoder_codes(cc: Crosscoder, a, b, chunk: int = 65536) -> np.ndarray:
    """(n, latents) codes of raw paired vectors, a chunk at a time."""
    dev = cc.W_dec_a.device
    out = [cc.codes(torch.as_tensor(a[i : i + chunk], dtype=torch.float32, device=dev),
                    torch.as_tensor(b[i : i + chunk], dtype=torch.float32, device=dev)).cpu()
           for i in range(0, len(a), chunk)]
    return torch.cat(out).numpy()


@torch.no_grad()
def fraction_unexplained(cc: Crosscoder, a, b, chunk: int = 16384) -> tuple[float, float]:
    """FVU of each model's vectors reconstructed by the crosscoder (scaled units; the scale cancels).

    Pairs are encoded ``chunk`` at a time: the codes of every pair at once (pairs x latents) would
    hold 10-13 GB at Tiny ImageNet's layer4. Sums are kept in float64."""
    a, b = np.asarray(a), np.asarray(b)
    dev = cc.W_dec_a.device
    n = len(a)
    err = torch.zeros(2, dtype=torch.float64, device=dev)
    sums = [torch.zeros(x.shape[1], dtype=torch.float64, device=dev) for x in (a, b)]
    squares = torch.zeros(2, dtype=torch.float64, device=dev)
    for start in range(0, n, chunk):
        xa = torch.as_tensor(a[start : start + chunk], dtype=torch.float32, device=dev) * cc.scale_a
        xb = torch.as_tensor(b[start : start + chunk], dtype=torch.float32, device=dev) * cc.scale_b
        ya, yb = cc.decode(cc.encode(xa, xb))
        for i, (x, y) in enumerate(((xa, ya), (xb, yb))):
            err[i] += ((x - y) ** 2).sum(dtype=torch.float64)
            sums[i] += x.sum(0, dtype=torch.float64)
            squares[i] += (x.double() ** 2).sum()
    # total variance about the mean: sum |x|^2 - n |mean|^2
    total = torch.stack([squares[i] - (sums[i] ** 2).sum() / max(n, 1) for i in range(2)])
    out = (err / total.clamp_min(1e-12)).cpu().tolist()
    return float(out[0]), float(out[1])


def classify(relative_norm: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Each latent's class by its relative decoder norm: "a_only", "b_only", "shared", "other", or "dead"
    (never fired on the evaluation pairs)."""
    r = np.asarray(relative_norm)
    lo, hi = THRESHOLDS["shared_within"]
    out = np.full(len(r), "other", dtype=object)
    out[r < THRESHOLDS["a_only_below"]] = "a_only"
    out[r > THRESHOLDS["b_only_above"]] = "b_only"
    out[(r >= lo) & (r <= hi)] = "shared"
    out[~np.asarray(live, bool)] = "dead"
    return out


def diff_counts(classes: np.ndarray) -> dict[str, int]:
    return {name: int((classes == name).sum()) for name in ("a_only", "b_only", "shared", "other", "dead")}
