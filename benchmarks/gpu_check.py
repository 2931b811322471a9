"""The one-shot GPU check: every stage of superlens on the device, time-boxed, in one results file.

    bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--budget SECONDS] [--steps a,b,...]

On a machine with a GPU and no network, in about 8 minutes: a tiny study on CUDA with
every strategy arm and every analysis (per-round psi, featvis), a run made on the CPU
and continued on the GPU (the resume case), ``superlens analyze``, the device-relevant
tests, the training throughput benchmark eager and compiled (with the plain-loop
ratio), and a full-size epoch (50,000 synthetic images) through the study path. Each
step runs in its own process under its own time limit and a global deadline; a failed
or timed-out step is recorded and the next one runs. Results: ``results.md`` (the table
to read), ``results.json``, and ``log.txt`` (every step's output) in the output folder.

``--dry-run`` runs the same steps on the CPU at a reduced size, so that CI keeps the
check working on machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ENV = """
import json, os, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                memory_gib=round(p.total_memory / 2**30, 1), device_count=torch.cuda.device_count(),
                cudnn=torch.backends.cudnn.version())
else:
    info["device"] = platform.machine() + " CPU"
print("ENV " + json.dumps(info))
"""

# A model trained on the CPU, its optimizer state saved, and training continued on the check's device:
# the resume-elsewhere workflow (CPU-made momentum buffers meet channels_last parameters on CUDA).
RESUME = """
import sys, numpy as np, torch
from superlens.data import load
from superlens.models import resnet18
from superlens.training import fit, make_optimizer, make_recipe
device = torch.device(sys.argv[1])
train = load("digits").train.subset(np.arange(256))
recipe = make_recipe("standard", epochs=1, batch_size=64)
torch.manual_seed(0)
model = resnet18(10, stem="cifar", width=8)
first = fit(model, train, recipe, device="cpu", progress=False)
state = {k: v.clone() for k, v in model.state_dict().items()}
saved = first.optimizer.state_dict()
model = resnet18(10, stem="cifar", width=8)
model.load_state_dict(state)
model.to(device)
optimizer = make_optimizer(model, recipe)
optimizer.load_state_dict(saved)
second = fit(model, train, recipe, device=device, optimizer=optimizer, progress=False)
assert np.isfinite(second.losses).all(), second.losses
print(f"resumed on {device}: {second.steps} steps, loss {first.losses[-1]:.3f} -> {second.losses[-1]:.3f}")
"""


@dataclass
class Step:
    name: str
    status: str  # ok, failed, timeout, skipped
    rc: int | None
    seconds: float
    limit: float
    last_line: str


def steps(dry: bool, device: str, out: Path) -> list[tuple[str, int, list[str]]]:
    """(name, time limit in seconds, command) of every step, at the dry run's size or the GPU's."""
    py = sys.executable
    cli = [py, "-m", "superlens"]
    strategies = _strategies()
    tiny = ["seeds=[0]", "model.width=8" if not dry else "model.width=4", "recipe.epochs=1", "recipe.batch_size=64",
            "data.train_subset=600" if not dry else "data.train_subset=300", "active.initial_size=40",
            "active.query_size=30", "active.rounds=2" if not dry else "active.rounds=1", "analysis.max_samples=200",
            "analysis.probe_samples=200", "sae.max_images=60", "sae.stability=true" if not dry else "sae.stability=false",
            "sae.settings.steps=20", "sae.settings.batch_size=128", "sae.per_round=true",
            "sae.superposition.max_steps=100", "sae.superposition.window=50", "featvis.units=[1,2]",
            "featvis.settings.steps=4", "toy.enabled=false", "active.mc_samples=3",
            "active.strategy_options.cluster_margin.n_clusters=5", f"device={device}"]
    if dry:
        tiny.append("analysis.tsne=false")
    arms = ",".join(["baseline"] + [f"al-{s}" for s in strategies])
    images, width = (1_000, 8) if dry else (50_000, 64)
    tests = (["tests/test_device_harness.py", "-k", "refuses or cuda_index or backward"] if dry else
             ["tests/test_device_harness.py", "tests/test_training.py", "tests/test_sae.py", "tests/test_lens.py"])
    bench = [py, str(ROOT / "benchmarks" / "train_throughput.py"), "--device", device,
             "--widths", *(["16"] if dry else ["64", "16"]), "--images", str(512 if dry else 49_152)]
    return [
        ("env", 60, [py, "-c", ENV]),
        ("smoke", 240, [*cli, "run", "demo", *tiny, f"arms=[{arms}]", "--out", str(out / "smoke"), "--quiet"]),
        ("resume", 90, [py, "-c", RESUME, device]),
        ("lens", 120, [*cli, "analyze", "resnet18", "model.width=8", "--data", "digits", "--layers", "layer3,layer4",
                       "--units", "1,2", "analysis.max_samples=300", "analysis.probe_samples=300", "sae.max_images=60",
                       "sae.settings.steps=20", "sae.superposition.max_steps=100", "sae.superposition.window=50",
                       "featvis.settings.steps=4", f"device={device}", "--out", str(out / "lens")]),
        ("pytest", 240, [py, "-m", "pytest", "-x", "-p", "no:cacheprovider", *tests]),  # -q from pyproject
        ("bench-eager", 120, bench),
        ("bench-compiled", 240, [*bench, "--compile", *(["--compile-backend", "eager"] if dry else [])]),
        ("synthetic", 150, [*cli, "run", "demo", "data.name=synthetic", f"data.options.n_train={images}",
                            "data.options.n_test=1000", "arms=[baseline]", "seeds=[0]", f"model.width={width}",
                            "recipe.epochs=1", "recipe.batch_size=512", "analysis.enabled=false", "sae.enabled=false",
                            "featvis.enabled=false", "toy.enabled=false", f"device={device}",
                            "--out", str(out / "synthetic"), "--quiet"]),
    ]


def _strategies() -> list[str]:
    from superlens.active.strategies import REGISTRY

    return sorted(REGISTRY)


def run(dry: bool, out: Path, budget: float, only: set[str] | None) -> list[Step]:
    out.mkdir(parents=True, exist_ok=True)
    for folder in ("smoke", "lens", "synthetic"):  # a check starts from nothing: no run of an earlier check resumed
        shutil.rmtree(out / folder, ignore_errors=True)
    device = "cpu" if dry else "cuda"
    deadline = time.monotonic() + budget
    log = open(out / "log.txt", "w")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'benchmarks'}"
           f"{os.pathsep + os.environ['PYTHONPATH'] if os.environ.get('PYTHONPATH') else ''}",
           "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    done: list[Step] = []
    for name, cap, command in steps(dry, device, out):
        left = deadline - time.monotonic()
        limit = min(cap, left)
        if only is not None and name not in only:
            done.append(Step(name, "skipped", None, 0.0, 0.0, "not in --steps"))
            continue
        if limit < 10:
            done.append(Step(name, "skipped", None, 0.0, 0.0, f"budget: {left:.0f} s left"))
            continue
        log.write(f"=== [{name}] limit {limit:.0f} s: {' '.join(command)}\n")
        log.flush()
        t0 = time.monotonic()
        try:
            proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
            rc, text, status = proc.returncode, proc.stdout + proc.stderr, "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired as exc:
            rc, status = None, "timeout"
            text = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr))
        seconds = time.monotonic() - t0
        log.write(text + f"\n=== [{name}] {status} after {seconds:.1f} s\n")
        log.flush()
        lines = [line for line in text.splitlines() if line.strip() and "img/s]" not in line]
        summary = _summary_line(name, lines)
        if name == "synthetic" and status == "ok":
            summary = _epoch_rate(out, 1_000 if dry else 50_000) or summary
        done.append(Step(name, status, rc, round(seconds, 1), round(limit, 1), summary))
        print(f"[{name}] {status} in {seconds:.0f} s: {done[-1].last_line}", flush=True)
    log.close()
    return done


def _summary_line(name: str, lines: list[str]) -> str:
    """The line of a step's output worth a table cell: the environment, a benchmark's rows, else the last line."""
    if name == "env":
        return next((line[4:] for line in lines if line.startswith("ENV ")), lines[-1] if lines else "")
    if name.startswith("bench"):
        rows = [[c.strip() for c in line.strip("| ").split("|")] for line in lines
                if line.startswith("| ") and line[2:3].isdigit()]
        if rows:  # width, GFLOP/img, ours, plain, ours/plain, of peak, eval
            return "; ".join(f"width {r[0]}: train {r[2]} img/s (plain loop {r[3]}, ours/plain {r[4]}, "
                             f"{r[5]} of peak), eval {r[-1]} img/s" for r in rows)
    if name == "pytest":
        return next((line for line in reversed(lines) if " passed" in line or " failed" in line or " error" in line),
                    lines[-1] if lines else "")
    return lines[-1][:300] if lines else ""



def _epoch_rate(out: Path, images: int) -> str | None:
    """The synthetic step's training throughput, from the seconds its run's manifest records."""
    try:
        seconds = json.loads((out / "synthetic" / "manifest.json").read_text())["stage_seconds"]["training"]
    except (OSError, ValueError, KeyError):
        return None
    return f"{images:,} images, one epoch: training {seconds:.1f} s, {images / seconds:,.0f} img/s (study path)"


def write_results(out: Path, done: list[Step], dry: bool) -> None:
    env = next((s.last_line for s in done if s.name == "env" and s.status == "ok"), "{}")
    try:
        info = json.loads(env)
    except ValueError:
        info = {}
    (out / "results.json").write_text(json.dumps({"dry_run": dry, "env": info, "steps": [asdict(s) for s in done]},
                                                 indent=2) + "\n")
    rows = [f"| {s.name} | {s.status} | {s.seconds:.0f} / {s.limit:.0f} | {s.last_line.replace('|', '/')} |"
            for s in done]
    text = [f"# GPU check{' (dry run on the CPU)' if dry else ''}: {info.get('device', 'unknown device')}", "",
            f"torch {info.get('torch')}, CUDA {info.get('cuda')}, {info.get('cpus')} CPUs", "",
            "| step | status | seconds / limit | result |", "|---|---|---|---|", *rows, "",
            f"{sum(s.status == 'ok' for s in done)} of {len(done)} steps passed; "
            f"{sum(s.seconds for s in done):.0f} s in all. Every step's output is in log.txt.", ""]
    (out / "results.md").write_text("\n".join(text))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at a reduced size")
    ap.add_argument("--out", type=Path, default=ROOT / "gpu-check-out")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for every step together")
    ap.add_argument("--steps", default=None, help="comma-separated step names to run (default: all)")
    args = ap.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here; run with --dry-run to check the steps on the CPU", file=sys.stderr)
            return 2
    only = set(args.steps.split(",")) if args.steps else None
    done = run(args.dry_run, args.out, args.budget, only)
    write_results(args.out, done, args.dry_run)
    print(f"results: {args.out / 'results.md'}")
    return 0 if all(s.status in ("ok", "skipped") for s in done) and any(s.status == "ok" for s in done) else 1


if __name__ == "__main__":
    sys.exit(main())
