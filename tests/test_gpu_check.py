"""The one-shot GPU check keeps working where there is no GPU: its dry run passes every step on the CPU,
under a Python that cannot import an installed superlens (as on the device image)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Started by every Python process of the check (PYTHONPATH carries it): the checkout's src folder, which an
# editable install puts on sys.path, is taken off again unless PYTHONPATH itself names it.
BLOCKER = """
import os, sys
src = {src!r}
named = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if src not in named:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != src]
"""

STEPS = ["env", "bench-eager", "bench-compiled", "epoch", "smoke", "resume", "lens", "browse", "diff", "scale",
         "scale-stages", "probe", "pytest"]


def without_installed_superlens(tmp_path) -> dict:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER.format(src=str(ROOT / "src")))
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(blocker)}


def test_the_gpu_check_dry_run_passes_every_step_without_an_installed_superlens(tmp_path):
    env = without_installed_superlens(tmp_path)
    cwd = tmp_path  # not the checkout, whose folder would be on sys.path as the current directory
    probe = subprocess.run([sys.executable, "-c", "import superlens"], capture_output=True, text=True, env=env, cwd=cwd)
    assert probe.returncode != 0 and "No module named 'superlens'" in probe.stderr  # the environment is as intended
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                          capture_output=True, text=True, env={**env, "OUT": str(out)}, cwd=cwd)
    results = json.loads((out / "results.json").read_text())
    failed = {s["name"]: s["last_line"] for s in results["steps"] if s["status"] != "ok"}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-2000:], proc.stderr[-2000:],
                                                 (out / "errors.txt").read_text()[-3000:])
    assert [s["name"] for s in results["steps"]] == STEPS  # performance first, the tests last
    table = (out / "results.md").read_text()
    assert "dry run on the CPU" in table and f"{len(STEPS)} of {len(STEPS)} steps passed" in table
    assert table.strip() in proc.stdout  # printed at the end
    assert (out / "errors.txt").read_text() == "no errors\n"
    bench = next(s for s in results["steps"] if s["name"] == "bench-eager")["last_line"]
    assert bench.startswith("width 16: train ") and "ours/plain" in bench  # the benchmark row, with ours / plain
    epoch = next(s for s in results["steps"] if s["name"] == "epoch")["last_line"]
    assert "later epochs" in epoch and "img/s" in epoch
    assert "stages: " in next(s for s in results["steps"] if s["name"] == "scale-stages")["last_line"]
    assert "PROBE parity ok" in next(s for s in results["steps"] if s["name"] == "probe")["last_line"]
    assert (out / "smoke" / "summary.json").exists() and (out / "lens" / "report.html").exists()
    assert (out / "smoke" / "browse").is_dir() and (out / "smoke" / "diff").is_dir()


def test_failed_jobs_are_gathered_into_errors_txt(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    job = tmp_path / "smoke" / "arms" / "al-margin" / "seed0"
    job.mkdir(parents=True)
    (job / "error.txt").write_text("Traceback ...\nRuntimeError: CUDA error: an illegal memory access\n")
    steps = [gpu_check.Step("env", "ok", 0, 1.0, 60, "{}"),
             gpu_check.Step("lens", "failed", 1, 2.0, 9, "boom line", "Traceback ...\nboom line")]
    text = gpu_check.gather_errors(tmp_path, steps)
    assert "smoke/arms/al-margin/seed0/error.txt" in text and "illegal memory access" in text
    assert "step lens: failed" in text and "boom line" in text and "step env" not in text


def test_without_a_gpu_the_full_check_says_to_dry_run(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the full check would run")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "run with --dry-run" in proc.stderr
