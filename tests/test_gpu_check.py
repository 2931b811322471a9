"""The one-shot GPU check keeps working where there is no GPU: its dry run passes every step on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_dry_run_passes_every_step(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    results = json.loads((out / "results.json").read_text())
    failed = {s["name"]: s["last_line"] for s in results["steps"] if s["status"] != "ok"}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-2000:], proc.stderr[-2000:])
    names = [s["name"] for s in results["steps"]]
    assert names == ["env", "smoke", "resume", "lens", "pytest", "bench-eager", "bench-compiled", "synthetic"]
    table = (out / "results.md").read_text()
    assert "dry run on the CPU" in table and "8 of 8 steps passed" in table
    bench = next(s for s in results["steps"] if s["name"] == "bench-eager")["last_line"]
    assert bench.startswith("width 16: train ") and "ours/plain" in bench  # the benchmark row, with ours / plain
    assert (out / "smoke" / "summary.json").exists() and (out / "lens" / "report.html").exists()


def test_without_a_gpu_the_full_check_says_to_dry_run(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the full check would run")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "run with --dry-run" in proc.stderr
