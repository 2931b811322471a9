"""Probes of the GPU path that a study's timings do not show, printed as one table.

    python benchmarks/gpu_probe.py [--device cuda] [--scale 1.0]

- parity: the device versions of k-center, k-means++ seeding, silhouette and the
  linear probe against their CPU versions on the same inputs (same picks; values
  within float32 tolerance);
- host syncs: how many times one training step, one SAE step of the psi protocol and
  one device k-center query wait for the host (``torch.cuda.set_sync_debug_mode``;
  CUDA only, "n/a" on the CPU);
- peak device memory of those steps;
- TF32: psi of the bench's G/N = 2 case with the SAEs' products in TF32 (the default on CUDA) and in
  FP32, on the same vectors; TF32 passes when the two lie within the larger SAE-seed SD (CUDA only).

On the CPU (``--device cpu``, the dry run) the "device" versions run on the CPU, so
parity checks the code paths, not the hardware.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch


def count_syncs(device: torch.device, fn) -> str:
    """Host syncs made by ``fn()`` on CUDA (warnings of the sync debug mode), after one warm-up call."""
    fn()
    if device.type != "cuda":
        return "n/a"
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return str(sum("synchroniz" in str(w.message).lower() for w in caught))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", type=float, default=1.0, help="problem sizes times this (the dry run uses less)")
    args = ap.parse_args()
    device = torch.device(args.device)
    from superlens.active.kcenter import greedy_kcenter, greedy_kcenter_dense, kmeanspp_seeding, kmeanspp_seeding_dense
    from superlens.analysis.geometry import linear_probe_accuracy, silhouette_score

    rng = np.random.default_rng(0)
    n, d = int(4000 * args.scale), 64
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, 10, n)
    x += 2 * np.eye(10, d, dtype=np.float32)[y]
    rows = []
    picks_cpu, _ = greedy_kcenter(x, x[:5], 50, np.random.default_rng(1))
    picks_dev, _ = greedy_kcenter_dense(x, x[:5], 50, np.random.default_rng(1), device)
    rows.append(("k-center picks equal", bool(np.array_equal(picks_cpu, picks_dev)), ""))
    f = [x[:, :32], x[:, 32:]]
    pp_cpu = kmeanspp_seeding(f, 30, np.random.default_rng(2), 0)
    pp_dev = kmeanspp_seeding_dense(f, 30, np.random.default_rng(2), 0, device)
    rows.append(("k-means++ picks distinct, first equal", len(set(pp_dev.tolist())) == 30 and pp_dev[0] == pp_cpu[0],
                 "draws differ by generator"))
    s_cpu = silhouette_score(x, y)
    s_dev = silhouette_score(x, y, device=device)
    rows.append(("silhouette", abs(s_cpu - s_dev) < 1e-4, f"cpu {s_cpu:.6f}, device {s_dev:.6f}"))
    half = n // 2
    p_cpu = linear_probe_accuracy(x[:half], y[:half], x[half:], y[half:], max_iter=200)
    p_dev = linear_probe_accuracy(x[:half], y[:half], x[half:], y[half:], max_iter=200, device=device)
    rows.append(("linear probe", abs(p_cpu - p_dev) <= 0.02, f"cpu {p_cpu:.4f}, device {p_dev:.4f}"))

    from superlens.data import load
    from superlens.models import resnet18
    from superlens.training import fit, make_recipe

    train = load("digits").train.subset(np.arange(256))
    recipe = make_recipe("standard", epochs=1, batch_size=64, steps=1)
    model = resnet18(10, stem="cifar", width=8)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_syncs = count_syncs(device, lambda: fit(model, train, recipe, device=device, progress=False))

    from superlens.analysis.sae_batched import train_saes
    from superlens.specs import SuperpositionSettings

    vectors = np.maximum(rng.normal(size=(int(20000 * args.scale), 128)), 0).astype(np.float32)
    classes = rng.integers(0, 10, len(vectors))
    settings = SuperpositionSettings(max_steps=1, batch_size=512, expansion=4).sae_settings()
    sae_syncs = count_syncs(device, lambda: train_saes(vectors, settings, [0, 1, 2], device=device, classes=classes))
    kc_syncs = count_syncs(device, lambda: greedy_kcenter_dense(x, x[:5], 20, np.random.default_rng(1), device))
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device.type == "cuda" else "n/a"
    if device.type == "cuda":  # TF32 does nothing elsewhere
        from superlens import measure_superposition
        from superlens.analysis.groundtruth import synthetic_activations

        bench = synthetic_activations(8000, 32, 64, active=2, magnitude="exponential", class_weight=2.0, seed=5)
        psi = {tf32: measure_superposition(bench.x, labels=bench.labels, device=device, tf32=tf32) for tf32 in (False, True)}
        sd = max(psi[False]["psi_sd"], psi[True]["psi_sd"])
        rows.append(("psi with TF32 within the SAE-seed SD of FP32", abs(psi[True]["psi"] - psi[False]["psi"]) <= sd,
                     f"fp32 {psi[False]['psi']:.3f} ({psi[False]['psi_sd']:.3f}), tf32 {psi[True]['psi']:.3f} "
                     f"({psi[True]['psi_sd']:.3f}); steps {psi[False]['steps']} / {psi[True]['steps']}"))
    print(f"device {device}; torch {torch.__version__}")
    print("| probe | result | detail |")
    print("|---|---|---|")
    for name, ok, detail in rows:
        print(f"| parity: {name} | {'ok' if ok else 'DIFFERS'} | {detail} |")
    print(f"| host syncs: one training step (fit of 1 step) | {train_syncs} | includes fit's set-up and final copy |")
    print(f"| host syncs: one psi-protocol SAE step (3 seeds) | {sae_syncs} | includes set-up and the final copy |")
    print(f"| host syncs: one k-center query of 20 picks | {kc_syncs} | the picks' copy back counts 2 |")
    print(f"| peak device memory | {peak} | |")
    bad = [name for name, ok, _ in rows if not ok]
    print(f"PROBE parity {'ok' if not bad else 'differs: ' + ', '.join(bad)}; syncs train {train_syncs}, "
          f"sae {sae_syncs}, k-center {kc_syncs}; peak {peak}")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
