"""Sparse autoencoders on a layer's activations: the model, its training (one seed; several side by
side is ``sae_batched``), and the vectors it is trained on.

One training vector is the layer's channel vector at one spatial position of one
image (a conv layer of C channels and H x W positions gives H*W vectors of size C per
image), or one pooled vector per image when asked. Before training, vectors are
scaled by one constant so that their mean squared norm equals their dimension.

The model: pre = (x - b_dec) W_enc + b_enc; z = TopK(ReLU(pre)) (``kind="topk"``, k
active latents) or ReLU(pre) with an L1 penalty (``kind="l1"``); x_hat = z W_dec + b_dec,
decoder rows kept at unit norm. Latents that have not fired for ``dead_after``
training vectors are revived by the auxiliary-k loss: the top ``aux_k`` dead latents
must reconstruct the residual x - x_hat (weight ``aux_coef``).

Training decodes a TopK code as a sum of its k decoder rows (``embedding_bag``),
forward and backward, instead of a dense product over every latent, and computes
the auxiliary term only while some latent is or may become dead before the next
look (every step on the CPU, every ``AUX_CHECK`` steps on an accelerator, so a GPU is
not made to wait every step); the term is masked by the dead latents of each step,
so it is the same term as when computed at every step. While it is on, one dense
encoder product serves the TopK code and the auxiliary term's dead latents
(``topk_forward``, shared by one SAE and several). Adam is the fused kernel where this
torch has one for the device.

What is measured with a trained SAE (L0, FVU, splicing, ...) is ``sae_measures``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from superlens.errors import UserError
from superlens.specs import SAESettings

AUX_CHECK = 50  # steps between two questions "is any latent dead?" on an accelerator (one host sync each)


def aux_check_every(device: torch.device) -> int:
    """How often training asks whether any latent is dead: every step on the CPU, where the answer is
    free; every ``AUX_CHECK`` steps on an accelerator, where asking waits for the device."""
    return 1 if device.type == "cpu" else AUX_CHECK


def topk_decode(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j vals[r, j] * W_dec[idx[r, j]] for each row r: a TopK code (the k values ``vals`` at latents
    ``idx``, both (rows, k)) decoded by gathering its k decoder rows, as ``z @ W_dec`` would with the dense
    code z, at k / latents of the cost; differentiable in ``vals`` and ``W_dec``."""
    return F.embedding_bag(idx, W_dec, per_sample_weights=vals.to(W_dec.dtype), mode="sum")


def batched_topk_decode(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``topk_decode`` for several SAEs at once: ``vals``, ``idx`` (S, B, k); ``W_dec`` (S, L, d) -> (S, B, d)."""
    S, B, k = idx.shape
    L, d = W_dec.shape[1:]
    offset = (torch.arange(S, device=idx.device) * L)[:, None, None]
    return topk_decode(vals.reshape(S * B, k), (idx + offset).reshape(S * B, k), W_dec.reshape(S * L, d)).reshape(S, B, d)


class _PickedPre(torch.autograd.Function):
    """Pre-activations at picked latents, taken from the product that picked them, with a backward that
    touches the picked columns alone."""

    @staticmethod
    def forward(ctx, x_in, W_enc, b_enc, idx, pre):
        S, B, k = idx.shape
        L = W_enc.shape[2]
        flat = (idx + (torch.arange(S, device=idx.device) * L)[:, None, None]).reshape(-1)
        ctx.save_for_backward(x_in, W_enc, flat)
        ctx.shape = (S, B, k, L)
        if pre.dtype == x_in.dtype:
            return pre.gather(2, idx)
        # picked in a lower precision: the k picked pre-activations recomputed in x_in's
        columns = W_enc.transpose(1, 2).reshape(S * L, -1).index_select(0, flat).reshape(S, B, k, -1)
        return (columns * x_in[:, :, None, :]).sum(3) + b_enc.reshape(-1).index_select(0, flat).reshape(S, B, k)

    @staticmethod
    def backward(ctx, grad):
        x_in, W_enc, flat = ctx.saved_tensors
        S, B, k, L = ctx.shape
        d = x_in.shape[2]
        grad = grad.contiguous()
        W_t = W_enc.transpose(1, 2).reshape(S * L, d)
        # d/dx_in: sum_j grad_j * column_j, a weighted bag of the picked columns
        grad_x = F.embedding_bag(flat.reshape(S * B, k), W_t, per_sample_weights=grad.reshape(S * B, k),
                                 mode="sum").reshape(S, B, d)
        rows = (grad[..., None] * x_in[:, :, None, :]).reshape(-1, d)
        grad_W = torch.zeros(S * L, d, device=W_enc.device, dtype=W_enc.dtype).index_add_(0, flat, rows)
        grad_b = torch.zeros(S * L, device=W_enc.device, dtype=W_enc.dtype).index_add_(0, flat, grad.reshape(-1))
        return grad_x, grad_W.reshape(S, L, d).transpose(1, 2), grad_b.reshape(S, 1, L), None, None


def picked_pre(x_in: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, idx: torch.Tensor,
               pre: torch.Tensor | None = None) -> torch.Tensor:
    """The pre-activations (S, B, k) of the latents ``idx`` (S, B, k) only, for encoder inputs ``x_in``
    (S, B, d), encoder ``W_enc`` (S, d, L) and bias ``b_enc`` (S, 1, L): the entries of
    ``x_in @ W_enc + b_enc`` at ``idx`` (read from ``pre``, that product computed without gradients,
    when given), with gradients that touch the k picked columns alone (a dense product's backward
    costs two more full products over every latent)."""
    if pre is None:
        with torch.no_grad():
            pre = torch.baddbmm(b_enc, x_in, W_enc)
    return _PickedPre.apply(x_in, W_enc, b_enc, idx, pre)


def topk_forward(x_in: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
                 settings: SAESettings, aux: bool, pick_dtype: torch.dtype | None = None
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Encode and decode encoder inputs ``x_in`` (S, B, d) of S SAEs (``W_enc`` (S, d, L), ``b_enc``
    (S, 1, L), ``W_dec`` (S, L, d)). Returns (pre, z, decoded, activity): ``pre`` the full pre-activations
    with gradients (None when not needed), ``z`` the dense code (L1 or k >= L only, else None), the
    decoding (S, B, d) before gains and bias, and each latent's code summed over the batch (S, L),
    detached: > 0 where it fired.

    TopK without ``aux``: the full product only picks each vector's k latents; their pre-activations
    are read from it with gradients by ``picked_pre``. With ``aux`` (the auxiliary term reads up to
    ``aux_k`` dead latents per vector) one dense product with gradients serves both. Either way the
    code is decoded as a bag of its k decoder rows. ``pick_dtype`` (bf16): the picking product (TopK
    without ``aux`` only) in that dtype; the k picked values are then recomputed in the inputs' dtype, so
    only the choice of latents can differ (where two pre-activations lie within the lower precision's
    rounding), and every gradient is the float32 one."""
    latents = W_enc.shape[2]
    if settings.kind != "topk" or settings.k >= latents:
        pre = torch.baddbmm(b_enc, x_in, W_enc)
        z = F.relu(pre)
        return pre, z, torch.bmm(z, W_dec), z.detach().sum(1)
    if aux:
        pre = torch.baddbmm(b_enc, x_in, W_enc)
        j = pre.detach().topk(settings.k, dim=2).indices
        vals = F.relu(torch.gather(pre, 2, j))
    else:
        pre = None
        with torch.no_grad():  # relu and top-k commute: pick on pre
            picking = (torch.baddbmm(b_enc, x_in, W_enc) if pick_dtype is None else
                       torch.baddbmm(b_enc.to(pick_dtype), x_in.to(pick_dtype), W_enc.to(pick_dtype)))
            j = picking.topk(settings.k, dim=2).indices
        vals = F.relu(picked_pre(x_in, W_enc, b_enc, j, picking))
    return pre, None, batched_topk_decode(vals, j, W_dec), code_sums(j, vals.detach(), latents)


def aux_decoding(pre: torch.Tensor, dead: torch.Tensor, k_aux: int, W_dec: torch.Tensor) -> torch.Tensor:
    """The auxiliary-k decoding (S, B, d) of the top ``k_aux`` dead latents (``dead`` (S, L)) of each vector.
    Live latents are masked to 0, so they are picked only when fewer than k_aux are dead and then add
    nothing; with none dead the decoding is 0."""
    masked = torch.where(dead[:, None, :], F.relu(pre.detach()), torch.zeros_like(pre))
    j = masked.topk(k_aux, dim=2).indices
    keep = torch.gather(dead[:, None, :].expand_as(masked), 2, j)
    return batched_topk_decode(torch.gather(F.relu(pre), 2, j) * keep, j, W_dec)


def aux_loss(residual: torch.Tensor, e_hat: torch.Tensor) -> torch.Tensor:
    """Per-SAE auxiliary loss: how much of the (detached) residual the dead latents' decoding misses."""
    err = residual.detach()
    return ((err - e_hat) ** 2).sum(2).mean(1) / (err * err).sum(2).mean(1).clamp_min(1e-12)


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one launch for all parameters) where this torch has one for their device."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (TypeError, RuntimeError):
        return torch.optim.Adam(params, lr=lr)


def code_sums(idx: torch.Tensor, vals: torch.Tensor, latents: int) -> torch.Tensor:
    """(..., latents): each latent's code summed over the batch of a TopK code (``idx``, ``vals``: (..., B, k),
    values >= 0); > 0 where the latent fired."""
    sums = torch.zeros(*idx.shape[:-2], latents, device=idx.device, dtype=vals.dtype)
    return sums.scatter_add_(-1, idx.flatten(-2), vals.flatten(-2))


class SparseAutoencoder(nn.Module):
    def __init__(self, dim: int, latents: int, settings: SAESettings, generator: torch.Generator) -> None:
        super().__init__()
        self.settings = settings
        decoder = F.normalize(torch.randn(latents, dim, generator=generator), dim=1)
        self.W_dec = nn.Parameter(decoder)
        self.W_enc = nn.Parameter(decoder.T.clone())  # tied at the start
        self.b_enc = nn.Parameter(torch.zeros(latents))
        self.b_dec = nn.Parameter(torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))  # inputs are multiplied by this first

    def pre(self, x: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        centred = x - self.b_dec
        return (centred if gain is None else centred * gain) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        """Latent codes of (already scaled) vectors; ``gain``: per-row class gains (``train_saes``)."""
        return self.activate(self.pre(x, gain))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        z = F.relu(pre)
        if self.settings.kind == "topk" and self.settings.k < z.shape[1]:
            vals, idx = z.topk(self.settings.k, dim=1)
            z = torch.zeros_like(z).scatter_(1, idx, vals)
        return z

    def decode(self, z: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        out = z @ self.W_dec
        return (out if gain is None else out * gain) + self.b_dec

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes of raw (unscaled) vectors of the layer."""
        return self.encode(x * self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of raw (unscaled) vectors, in the same units."""
        return self.decode(self.encode(x * self.scale)) / self.scale

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.data = F.normalize(self.W_dec.data, dim=1)


@dataclass
class SAETraining:
    sae: SparseAutoencoder
    losses: list[float] = field(default_factory=list)


def progress_log(log, label: str, every: float = 10.0):
    """A ``progress`` callback for ``train_sae``/``train_saes`` that logs ``label``'s step, loss and the
    most time left through ``log``, at most once per ``every`` seconds (None when ``log`` is None)."""
    import time

    if log is None:
        return None
    last = [time.perf_counter()]

    def report(step: int, loss: float, eta: float) -> None:
        if time.perf_counter() - last[0] >= every:
            last[0] = time.perf_counter()
            log(f"{label} at step {step}, loss {loss:.4g}, at most {eta:.0f} s left")
    return report


def _training_vectors(vectors, device: torch.device) -> torch.Tensor:
    """``vectors`` as a float32 (n, d) tensor on ``device``, checked: at least 2 rows, all finite."""
    x = torch.as_tensor(np.asarray(vectors), dtype=torch.float32, device=device)
    if x.ndim != 2 or len(x) < 2:
        raise UserError(f"sae needs a 2-D array of at least 2 vectors, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise UserError("sae input has NaN or inf values")
    return x


def train_sae(vectors, settings: SAESettings = SAESettings(), device=None, progress=None) -> SAETraining:
    """Train a sparse autoencoder on ``vectors`` (n x d), sampled in random batches.

    ``progress(step, loss, eta_seconds)`` is called every 250 steps (one host sync each)."""
    import time

    started = time.perf_counter()
    device = torch.device(device) if device is not None else torch.device("cpu")
    x = _training_vectors(vectors, device)
    generator = torch.Generator().manual_seed(settings.seed)
    n, d = x.shape
    sae = SparseAutoencoder(d, settings.expansion * d, settings, generator).to(device)
    sae.scale.fill_(float(np.sqrt(d / max(float((x * x).sum(1).mean()), 1e-12))))
    with torch.no_grad():
        sae.b_dec.copy_((x * sae.scale).mean(0))
    optimizer = make_adam(sae.parameters(), settings.lr)
    latents = sae.W_dec.shape[0]
    since_fired = torch.zeros(latents, device=device)
    batch = min(settings.batch_size, n)
    k_aux = min(settings.aux_k, latents)
    # Batches are drawn on the device; nothing in the loop waits for the host but the dead-latent question.
    draws = torch.Generator(device=device).manual_seed(settings.seed)
    losses = torch.zeros(settings.steps, device=device)
    any_dead = False
    check_every = aux_check_every(x.device)
    for step in range(settings.steps):
        if step % check_every == 0:  # can a latent be dead before the next question? (exact: the term is masked)
            any_dead = bool((since_fired + check_every * batch >= settings.dead_after).any())
        idx = torch.randint(n, (batch,), generator=draws, device=device)
        xb = (x[idx] * sae.scale)[None]  # one SAE in the batched shapes of topk_forward
        W_dec = sae.W_dec[None]
        pre, z, decoded, activity = topk_forward(xb - sae.b_dec, sae.W_enc[None], sae.b_enc[None, None], W_dec,
                                                 settings, any_dead)
        residual = xb - (decoded + sae.b_dec)
        loss = (residual * residual).sum(2).mean()
        if settings.kind == "l1":
            loss = loss + settings.l1 * z.sum(2).mean()
        since_fired = torch.where(activity[0] > 0, torch.zeros_like(since_fired), since_fired + batch)
        dead = since_fired >= settings.dead_after
        if any_dead:
            e_hat = aux_decoding(pre, dead[None], k_aux, W_dec)
            loss = loss + settings.aux_coef * aux_loss(residual, e_hat)[0] * dead.any()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sae.normalize_decoder()
        losses[step] = loss.detach()
        if progress is not None and (step + 1) % 250 == 0:
            rate = (time.perf_counter() - started) / (step + 1)
            progress(step + 1, float(losses[step - 249 : step + 1].mean()), rate * (settings.steps - step - 1))
    return SAETraining(sae, losses.cpu().tolist())


def vector_labels(labels: np.ndarray, n_vectors: int) -> np.ndarray:
    """The class of each SAE vector: its image's label, repeated over the image's positions (or tokens),
    as ``conv_vectors`` lays the vectors out (image by image)."""
    return np.repeat(labels, n_vectors // max(1, len(labels)))


def conv_vectors(acts: np.ndarray) -> np.ndarray:
    """(images, C, H, W) activations -> (images * H * W, C) channel vectors; 2-D input unchanged."""
    if acts.ndim == 2:
        return acts
    if acts.ndim != 4:
        raise UserError(f"expected (images, C) or (images, C, H, W) activations, got shape {acts.shape}")
    return acts.transpose(0, 2, 3, 1).reshape(-1, acts.shape[1])
