"""The one-shot GPU check: every stage of superlens on the device, time-boxed, in one results file.

    bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--budget SECONDS] [--steps a,b,...]

It runs from the checkout alone: superlens is imported from ``src`` (the device image
has torch and the scientific stack, not superlens). On a machine with a GPU and no
network, in about 8 minutes, performance first: the training throughput benchmark
eager and compiled (with the plain-loop ratio), a full-size epoch (50,000 synthetic
images) through ``fit`` timed over the epochs after the first; then a tiny study on
CUDA with every strategy arm and every analysis (per-round psi, featvis), a run made
on the CPU and continued on the GPU (the resume case), ``superlens analyze``,
``browse`` and ``diff`` on the tiny study, a scale study (50,000 synthetic images at
width 64, ``al-badge`` and ``al-coreset``, a ``scratch_same_init`` round of 2,000,
psi, t-SNE) with its seconds per stage, the parity and host-sync probes
(``gpu_probe.py``), and the device-relevant tests. Each step runs in its own process
under its own time limit and a global deadline; a failed or timed-out step is recorded
and the next one runs. Results, in ``$OUT`` when it is set (a lent machine returns
that folder), else ``--out``: ``results.md`` (the table to read, also printed at the
end), ``results.json``, ``errors.txt`` (every failed job's ``error.txt`` and every
failed step's last lines) and ``log.txt`` (every step's output).

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
sys.path.insert(0, str(ROOT / "src"))  # this process reads the strategy registry; superlens may not be installed

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
    output_tail: str = ""  # the last 40 lines of a failed or timed-out step's output


def steps(dry: bool, device: str, out: Path) -> list[tuple[str, int, list[str]]]:
    """(name, time limit in seconds, command) of every step, at the dry run's size or the GPU's."""
    py = sys.executable
    cli = [py, "-m", "superlens"]
    strategies = _strategies()
    tiny = ["workers=1", "seeds=[0]", "model.width=8" if not dry else "model.width=4", "recipe.epochs=1",
            "recipe.batch_size=64",
            "data.train_subset=600" if not dry else "data.train_subset=300", "active.initial_size=40",
            "active.query_size=30", "active.rounds=2" if not dry else "active.rounds=1", "analysis.max_samples=200",
            "analysis.probe_samples=200", "sae.max_images=60", "sae.stability=true" if not dry else "sae.stability=false",
            "sae.settings.steps=20", "sae.settings.batch_size=128", "sae.per_round=true",
            "sae.superposition.max_steps=100", "sae.superposition.window=50", "featvis.units=[1,2]",
            "featvis.settings.steps=4", "toy.enabled=false", "active.mc_samples=3",
            "active.strategy_options.cluster_margin.n_clusters=5", f"device={device}",
            *[f"active.strategy_options.{name}.{key}={value}" for name in ("latent_coverage", "interference")
              for key, value in (("fit_images", 100), ("steps", 50), ("batch_size", 128))]]
    if dry:
        tiny.append("analysis.tsne=false")
    # the dry run checks the check's own steps; every strategy's engine run on the CPU is a test of the suite
    arms = ",".join(["baseline"] + [f"al-{s}" for s in (["margin", "random"] if dry else strategies)])
    images, width = (512, 8) if dry else (50_000, 64)
    tests = (["tests/test_device_harness.py", "-k", "refuses or cuda_index or backward"] if dry else
             ["tests/test_device_harness.py", "tests/test_training.py", "tests/test_sae.py", "tests/test_lens.py",
              "tests/test_strategies.py", "tests/test_superposition.py"])
    bench = [py, str(ROOT / "benchmarks" / "train_throughput.py"), "--device", device,
             "--widths", *(["16"] if dry else ["64", "16"]), "--images", str(256 if dry else 49_152),
             *(["--batch-size", "64"] if dry else [])]
    smoke = out / "smoke"
    scale = ["workers=1",
             f"data.options.n_train={1_000 if dry else 50_000}", f"data.options.n_test={200 if dry else 1_000}",
             f"model.width={4 if dry else 64}", "seeds=[0]", "arms=[al-badge,al-coreset]",
             "active.reset=scratch_same_init", f"active.initial_size={100 if dry else 2_000}",
             f"active.query_size={50 if dry else 2_000}", "active.rounds=1", "recipe.epochs=1",
             "recipe.batch_size=512", f"analysis.max_samples={150 if dry else 10_000}",
             f"analysis.probe_samples={150 if dry else 10_000}",
             f"analysis.tsne={'false' if dry else 'true'}", f"sae.max_images={50 if dry else 5_000}",
             f"sae.superposition.max_steps={100 if dry else 1_200}", "featvis.enabled=false", "toy.enabled=false"]
    return [
        ("env", 60, [py, "-c", ENV]),
        ("bench-eager", 120, bench),
        ("bench-compiled", 240, [*bench, "--compile", *(["--compile-backend", "eager"] if dry else [])]),
        ("epoch", 150, [py, "-c", EPOCH, device, str(images), str(width)]),
        ("smoke", 240, [*cli, "run", "demo", *tiny, f"arms=[{arms}]", "--out", str(smoke), "--quiet"]),
        ("resume", 90, [py, "-c", RESUME, device]),
        ("lens", 120, [*cli, "analyze", "resnet18", "model.width=8", "--data", "digits", "--layers", "layer3,layer4",
                       "--units", "1,2", "analysis.max_samples=300", "analysis.probe_samples=300", "sae.max_images=60",
                       "sae.settings.steps=20", "sae.superposition.max_steps=100", "sae.superposition.window=50",
                       "featvis.settings.steps=4", f"device={device}", "--out", str(out / "lens")]),
        ("browse", 60, [*cli, "browse", str(smoke), "--arm", "al-random", "--seed", "0"]),
        ("diff", 90, [*cli, "diff", str(smoke), "--arms", "al-random,al-margin", "--steps", "50"]),
        ("scale", 240, [*cli, "run", "demo", "data.name=synthetic", *scale, f"device={device}",
                        "--out", str(out / "scale"), "--quiet"]),
        ("scale-stages", 20, [py, "-c", STAGES, str(out / "scale" / "manifest.json")]),
        ("probe", 120, [py, str(ROOT / "benchmarks" / "gpu_probe.py"), "--device", device,
                        "--scale", "0.25" if dry else "1"]),
        ("pytest", 240, [py, "-m", "pytest", "-p", "no:cacheprovider", *tests]),  # every failure, not the first
    ]


def _strategies() -> list[str]:
    from superlens.active.strategies import REGISTRY

    return sorted(REGISTRY)


# A full-size epoch through the study's training path: fit once (set-up, cuDNN autotuning, the first epoch),
# then time two more epochs of the same model, so the rate is the steady one, not the set-up's.
EPOCH = """
import sys, time, torch
from superlens.data import load
from superlens.models import resnet18
from superlens.training import fit, make_recipe
device, images, width = torch.device(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
train = load("synthetic", n_train=images, n_test=100).train
recipe = make_recipe("standard", epochs=1, batch_size=512)
model = resnet18(10, stem="cifar", width=width)
t0 = time.perf_counter()
first = fit(model, train, recipe, device=device, progress=False)
setup = time.perf_counter() - t0
recipe = make_recipe("standard", epochs=2, batch_size=512)
t0 = time.perf_counter()
later = fit(model, train, recipe, device=device, optimizer=first.optimizer, progress=False)
if device.type == "cuda":
    torch.cuda.synchronize()
steady = time.perf_counter() - t0
print(f"{images:,} images at width {width}: first epoch (with set-up) {setup:.1f} s; "
      f"later epochs {later.images_seen / steady:,.0f} img/s (fit, study path)")
"""

# The scale study's seconds per stage, from its manifest, and the device's peak memory if recorded.
STAGES = """
import json, sys
m = json.load(open(sys.argv[1]))
stages = m.get("stage_seconds", {})
total = sum(stages.values()) or 1.0
print("stages: " + ", ".join(f"{k} {v:.0f} s ({v / total:.0%})" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])))
"""


def run(dry: bool, out: Path, budget: float, only: set[str] | None) -> list[Step]:
    out.mkdir(parents=True, exist_ok=True)
    for folder in ("smoke", "lens", "scale"):  # a check starts from nothing: no run of an earlier check resumed
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
        tail = "\n".join(text.splitlines()[-40:]) if status in ("failed", "timeout") else ""
        done.append(Step(name, status, rc, round(seconds, 1), round(limit, 1), summary, tail))
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



def gather_errors(out: Path, done: list[Step]) -> str:
    """Every failed job's ``error.txt`` under ``out`` and the last lines of every step that did not pass,
    in one text: the files a lent machine returns come from ``out`` alone, not from folders deep in it."""
    parts = [f"=== {path.relative_to(out)}\n{path.read_text(errors='replace').strip()}\n"
             for path in sorted(out.rglob("error.txt"))]
    parts += [f"=== step {step.name}: {step.status}\n{step.output_tail}\n" for step in done
              if step.status in ("failed", "timeout")]
    return "\n".join(parts) if parts else "no errors\n"


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
            f"{sum(s.seconds for s in done):.0f} s in all. Every step's output is in log.txt; "
            "failed jobs and steps are in errors.txt.", ""]
    (out / "results.md").write_text("\n".join(text))
    (out / "errors.txt").write_text(gather_errors(out, done))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at a reduced size")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "gpu-check-out",
                    help="output folder (default: $OUT when set, else gpu-check-out)")
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
    print((args.out / "results.md").read_text())
    print(f"results: {args.out / 'results.md'}; errors: {args.out / 'errors.txt'}")
    return 0 if all(s.status in ("ok", "skipped") for s in done) and any(s.status == "ok" for s in done) else 1


if __name__ == "__main__":
    sys.exit(main())
