"""The ground-truth bench's fast case in full, with its checks: psi at G/N = 1, 2, 3, 6 with and without
class structure, and at G/N = 6 without class gains (about 3.5 minutes on 2 CPU cores).

    python benchmarks/superposition_fast_case.py

The design generator in small (8,000 vectors, 32 neurons), the protocol at its library
defaults. Checks, as the suite once asserted them (the suite keeps the G/N = 1, 2, 3 part
on a smaller generator, tests/test_superposition.py):
    psi rises with G/N (1 < 2 < 3 < 6);
    class structure (c = 2) moves psi less than the G/N = 2 -> 3 step, at G/N = 2 and 6;
    without class gains, c = 2 at G/N = 6 lowers psi by more than that step;
    psi is within 0.5 of 2 at G/N = 2 and within 0.75 of 3 at G/N = 3.
"""

from __future__ import annotations

import time

import torch

import superlens
from superlens.analysis.groundtruth import synthetic_activations

CELLS = ((1, 0.0, True), (2, 0.0, True), (3, 0.0, True), (2, 2.0, True), (6, 0.0, True), (6, 2.0, True),
         (6, 2.0, False))


def main() -> None:
    started = time.perf_counter()
    psi = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| G/N | c | class gains | psi (SAE-seed SD) | steps | seconds |")
    print("|---|---|---|---|---|---|")
    for ratio, c, gains in CELLS:
        d = synthetic_activations(8000, 32, ratio * 32, class_weight=c, seed=0)
        t0 = time.perf_counter()
        m = superlens.measure_superposition(d.x, labels=d.labels, batch_size=1024, class_gains=gains)
        psi[(ratio, c, gains)] = m["psi"]
        print(f"| {ratio} | {c:g} | {gains} | {m['psi']:.3f} ({m['psi_sd']:.3f}) | {m['steps']} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)
    step = abs(psi[(3, 0.0, True)] - psi[(2, 0.0, True)])
    checks = {
        "psi rises with G/N": psi[(1, 0.0, True)] < psi[(2, 0.0, True)] < psi[(3, 0.0, True)] < psi[(6, 0.0, True)],
        "c = 2 moves psi less than the 2 -> 3 step at G/N = 2": abs(psi[(2, 2.0, True)] - psi[(2, 0.0, True)]) < step,
        "c = 2 moves psi less than the 2 -> 3 step at G/N = 6": abs(psi[(6, 2.0, True)] - psi[(6, 0.0, True)]) < step,
        "without gains, c = 2 lowers psi at G/N = 6 by more than the step": psi[(6, 0.0, True)] - psi[(6, 2.0, False)] > step,
        "rough count at G/N = 2 and 3": abs(psi[(2, 0.0, True)] - 2) < 0.5 and abs(psi[(3, 0.0, True)] - 3) < 0.75,
    }
    print()
    for name, ok in checks.items():
        print(f"- {name}: {'pass' if ok else 'FAIL'}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
