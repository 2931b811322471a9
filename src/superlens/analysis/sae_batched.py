"""Several sparse autoencoders trained side by side, one per seed, in one batched model: the psi
protocol's trainer (``train_saes``), with class gains, a convergence rule on the loss and an optional
further stop rule, and the arithmetic it uses on each device. The model and the single-SAE trainer
are ``sae``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from superlens.analysis.sae import (SparseAutoencoder, _training_vectors, aux_check_every, aux_decoding, aux_loss,
                                    make_adam, topk_forward)
from superlens.errors import UserError
from superlens.specs import SAESettings

@dataclass
class _Batched:
    """The parameters of several SAEs stacked along a first (seed) dimension."""

    W_dec: nn.Parameter  # (S, L, d), rows kept at unit norm
    W_enc: nn.Parameter  # (S, d, L)
    b_enc: nn.Parameter  # (S, 1, L)
    b_dec: nn.Parameter  # (S, 1, d)
    log_gain: nn.Parameter | None = None  # (S, classes, d): log of each class's gain per neuron

    @classmethod
    def start(cls, x: torch.Tensor, scale: float, latents: int, seeds: list[int], classes: int = 0) -> "_Batched":
        """Each seed's initial weights as ``SparseAutoencoder`` draws them; decoder bias at the data mean;
        with ``classes``, class gains of 1."""
        d = x.shape[1]
        inits = [F.normalize(torch.randn(latents, d, generator=torch.Generator().manual_seed(s)), dim=1) for s in seeds]
        W_dec = nn.Parameter(torch.stack(inits).to(x.device))
        return cls(W_dec, nn.Parameter(W_dec.detach().transpose(1, 2).clone()),  # tied at the start
                   nn.Parameter(torch.zeros(len(seeds), 1, latents, device=x.device)),
                   nn.Parameter((x * scale).mean(0).expand(len(seeds), 1, d).clone()),
                   nn.Parameter(torch.zeros(len(seeds), classes, d, device=x.device)) if classes else None)

    def params(self) -> list[nn.Parameter]:
        return [self.W_dec, self.W_enc, self.b_enc, self.b_dec] + ([self.log_gain] if self.log_gain is not None else [])

    def gains(self, classes: torch.Tensor | None) -> torch.Tensor | float:
        """(S, B, d) gains of rows of the classes ``classes`` (S, B); 1 without class gains."""
        if self.log_gain is None:
            return 1.0
        return torch.exp(self.log_gain).gather(1, classes[:, :, None].expand(-1, -1, self.log_gain.shape[2]))

    def loss(self, xb: torch.Tensor, settings: SAESettings, since_fired: torch.Tensor, k_aux: int,
             aux: bool, classes: torch.Tensor | None = None, pick_dtype: torch.dtype | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-seed loss of the batch ``xb`` (S, B, d) of classes ``classes`` (S, B), the updated
        steps-since-fired counters and each latent's summed code in the batch (S, L); ``aux``: add the
        auxiliary-k term (some latent may be dead); ``pick_dtype``: as in ``topk_forward``."""
        gain = self.gains(classes)
        pre, z, decoded, activity = topk_forward((xb - self.b_dec) * gain, self.W_enc, self.b_enc, self.W_dec,
                                                 settings, aux, pick_dtype)
        residual = xb - (decoded * gain + self.b_dec)
        per_seed = (residual * residual).sum(2).mean(1)
        if settings.kind == "l1":
            per_seed = per_seed + settings.l1 * z.sum(2).mean(1)
        since_fired = torch.where(activity > 0, torch.zeros_like(since_fired), since_fired + xb.shape[1])
        dead = since_fired >= settings.dead_after  # (S, L)
        if aux:  # the auxiliary-k loss on each seed's dead latents, as in train_sae
            e_hat = aux_decoding(pre, dead, k_aux, self.W_dec) * gain
            per_seed = per_seed + settings.aux_coef * aux_loss(residual, e_hat) * dead.any(1)
        return per_seed, since_fired, activity

    def split(self, settings: SAESettings, seeds: list[int], scale: float) -> list[SparseAutoencoder]:
        saes = []
        for i, seed in enumerate(seeds):
            latents, d = self.W_dec.shape[1:]
            sae = SparseAutoencoder(d, latents, replace(settings, seed=seed), torch.Generator().manual_seed(seed))
            sae = sae.to(self.W_dec.device)
            with torch.no_grad():
                for name in ("W_dec", "W_enc", "b_enc", "b_dec"):
                    getattr(sae, name).copy_(getattr(self, name)[i].reshape(getattr(sae, name).shape))
                sae.scale.fill_(scale)
            saes.append(sae)
        return saes


@dataclass
class SAEBatch:
    """Several SAEs trained side by side (one per seed) and how their training ended."""

    saes: list[SparseAutoencoder]
    losses: np.ndarray  # (seeds, steps run) training loss
    steps: int  # optimizer steps run
    converged: bool  # every seed's windowed loss settled before the step cap (and the rule's, with a rule)
    gains: np.ndarray | None = None  # (seeds, classes, d) class gains per neuron, when trained with classes
    precision: str = "float32"  # the products' arithmetic: "float32", "tf32" (CUDA), "bf16 pick" (bf16 CPUs)
    trace: list = field(default_factory=list)  # per window with a rule: step, mean loss and the rule's record


@contextmanager
def matmul_precision(device: torch.device, tf32: bool):
    """TF32 tensor cores for the float32 products inside the block on CUDA (several times the FP32 rate on
    the GPUs that have them; a 10-bit mantissa in the product, float32 accumulation); the caller's setting
    is restored after. Nothing changes on other devices or with ``tf32=False``."""
    if device.type != "cuda" or not tf32:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def pick_precision(device: torch.device, tf32: bool, bf16: bool) -> str:
    """The arithmetic ``train_saes`` uses on ``device``: "tf32" (CUDA, ``tf32``), "bf16 pick" (a CPU with
    bf16 units, ``bf16``), else "float32"."""
    if device.type == "cuda":
        return "tf32" if tf32 else "float32"
    if device.type == "cpu" and bf16:
        from superlens.hardware import cpu_bf16_units

        return "bf16 pick" if cpu_bf16_units() else "float32"
    return "float32"


def train_saes(vectors, settings: SAESettings, seeds: list[int], tolerance: float = 0.01, window: int = 250,
               device=None, progress=None, classes=None, tf32: bool = True, bf16: bool = True, rule=None) -> SAEBatch:
    """Train one TopK (or L1) SAE per seed in one batched model until the loss settles.

    Every ``window`` steps the mean loss of the window is compared with the previous
    window's; training stops when the relative change is below ``tolerance`` for every
    seed, or at ``settings.steps`` (the cap). Each seed draws its own initial weights
    (as ``train_sae`` with that seed would) and its own batches. ``progress(step, loss,
    eta_seconds)`` is called once per window.

    ``classes``: the class index (0, 1, ...) of each row. With it each SAE also learns
    a gain per class and neuron (starting at 1) that scales the encoder's input and
    the decoder's output, x_hat = (z W_dec) * g_y + b_dec: a class that silences or
    amplifies a neuron (a class-dependent shift before a ReLU) then rescales one
    feature's direction instead of making a variant of it per class.

    ``tf32``: on CUDA, the float32 products in TF32 (``matmul_precision``). ``bf16``: on a CPU with
    bf16 units (AVX512-BF16, AMX; ``superlens.hardware.cpu_bf16_units``), the product that picks each
    vector's k latents in bf16 (``topk_forward``'s ``pick_dtype``; that product at over twice the float32 rate
    there); the picked values and the gradients stay float32. ``SAEBatch.precision`` says which ran.

    ``rule(W_dec, activity)``: a further stop condition, asked once per window with the decoders (S, L, d)
    and each latent's summed code over the window (S, L); it returns (settled, a record for
    ``SAEBatch.trace``). Training then stops when the loss and the rule have both settled.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    precision = pick_precision(device, tf32, bf16)
    with matmul_precision(device, tf32):
        return _train_saes(vectors, settings, seeds, tolerance, window, device, progress, classes, precision, rule)


def _train_saes(vectors, settings: SAESettings, seeds: list[int], tolerance: float, window: int, device: torch.device,
                progress, classes, precision: str, rule) -> SAEBatch:
    import time

    pick_dtype = torch.bfloat16 if precision == "bf16 pick" else None
    x = _training_vectors(vectors, device)
    n, d = x.shape
    y = None if classes is None else torch.as_tensor(np.asarray(classes), dtype=torch.long, device=device)
    if y is not None and (y.shape != (n,) or int(y.min()) < 0):
        raise UserError(f"classes must be one class index >= 0 per vector ({n}), got shape {tuple(y.shape)}")
    latents = settings.expansion * d
    scale = float(np.sqrt(d / max(float((x * x).sum(1).mean()), 1e-12)))
    model = _Batched.start(x, scale, latents, seeds, 0 if y is None else int(y.max()) + 1)
    optimizer = make_adam(model.params(), settings.lr)
    batch, k_aux = min(settings.batch_size, n), min(settings.aux_k, latents)
    draws = torch.Generator(device=device).manual_seed(seeds[0])
    since_fired = torch.zeros(len(seeds), latents, device=device)
    losses = torch.zeros(len(seeds), settings.steps, device=device)
    previous, settled, step, started, any_dead = None, False, 0, time.perf_counter(), False
    window_activity, trace = torch.zeros(len(seeds), latents, device=device), []
    check_every = aux_check_every(x.device)
    while step < settings.steps and not settled:
        if step % check_every == 0:  # can a latent be dead before the next question? (exact: the term is masked)
            any_dead = bool((since_fired + check_every * batch >= settings.dead_after).any())
        rows = torch.randint(n, (len(seeds), batch), generator=draws, device=device)
        per_seed, since_fired, activity = model.loss(x[rows] * scale, settings, since_fired, k_aux, aux=any_dead,
                                           classes=None if y is None else y[rows], pick_dtype=pick_dtype)
        optimizer.zero_grad(set_to_none=True)
        per_seed.sum().backward()
        optimizer.step()
        with torch.no_grad():
            model.W_dec.data = F.normalize(model.W_dec.data, dim=2)
        losses[:, step] = per_seed.detach()
        if rule is not None:
            window_activity += activity
        step += 1
        if step % window == 0:  # one host sync per window
            current = losses[:, step - window : step].mean(1).cpu()
            if previous is not None:
                settled = bool(((previous - current).abs() <= tolerance * previous.abs()).all())
            previous = current
            if rule is not None:
                rule_settled, record = rule(model.W_dec.detach(), window_activity)
                trace.append({"step": step, "loss": float(current.mean()), **record})
                settled = settled and rule_settled
                window_activity.zero_()
            if progress is not None:
                progress(step, float(current.mean()), (time.perf_counter() - started) / step * (settings.steps - step))
    gains = None if model.log_gain is None else torch.exp(model.log_gain).detach().cpu().numpy()
    return SAEBatch(model.split(settings, seeds, scale), losses[:, :step].cpu().numpy(), step, settled, gains, precision,
                    trace=trace)
