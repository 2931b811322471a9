"""The share of a study's wall time each stage takes, from its run directory's manifest.json.

    python benchmarks/stage_share.py RUN_DIR [RUN_DIR ...]

Stages are what the study records (data, training, analysis, sae, featvis, similarity,
summary, report); "other" is the wall time no stage accounts for (start-up, waiting).
On a GPU, a large share for the stages that run on the CPU (analysis: t-SNE and the
probes; similarity) is time the GPU waits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def shares(manifest: dict) -> list[tuple[str, float, float]]:
    """(stage, seconds, share of the wall time) of every stage, then "other"."""
    wall = manifest["this_invocation_seconds"]
    rows = [(stage, s, s / wall) for stage, s in manifest["stage_seconds"].items()]
    rest = wall - sum(s for _, s, _ in rows)
    return rows + [("other", rest, rest / wall)]


def main() -> None:
    for run in sys.argv[1:]:
        m = json.loads((Path(run) / "manifest.json").read_text())
        print(f"{run}: {m.get('device_name') or m.get('device')}, {m.get('torch_threads')} threads, torch {m.get('torch')}, "
              f"wall {m['this_invocation_seconds']:,.0f} s, executor {m.get('executor')}")
        print("| stage | seconds | share |")
        print("|---|---|---|")
        for stage, seconds, share in shares(m):
            print(f"| {stage} | {seconds:,.0f} | {share:.1%} |")
        print()


if __name__ == "__main__":
    main()
