"""Where every file of a run directory lives; the one place that spells out its layout.

    <run>/config.yaml, manifest.json, summary.json, rounds.csv, report.html, classes.json, toy.json
    <run>/round0/seed<k>/         the round 0 every active-learning arm of seed k starts from
    <run>/arms/<arm>/seed<k>/     one (arm, seed) job

A job folder holds what its stages wrote (see ``JobPaths``). Nothing here reads or
writes a file; this module imports nothing of the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _file(name: str) -> property:
    """A file of the folder an instance stands for (its ``root``)."""
    return property(lambda self: self.root / name)


@dataclass(frozen=True)
class JobPaths:
    """The files of one job folder."""

    folder: Path

    @property
    def root(self) -> Path:
        return self.folder

    model = _file("model.pt")  # final weights (state dict)
    optimizer = _file("optimizer.pt")  # optimizer state, for a job that continues this model
    checkpoint = _file("checkpoint.pt")  # model, optimizer, pool, strategy state and records after the last round
    pool = _file("pool.npy")  # round in which each training image was labelled (-1: never)
    records = _file("records.json")  # per-round records so far
    queries = _file("queries.npz")  # every queried image: round, index, id, label, rank, score, prediction
    done = _file("done.json")  # written last by training: the job's records, and that it finished
    analysis = _file("analysis.json")
    tsne = _file("tsne.npz")
    sae = _file("sae.json")
    similarity = _file("similarity.json")  # CKA against al-random's model of the same seed
    features = _file("features.npz")  # AL arms: the analysed test images' features at the analysis layer, for CKA
    dose = _file("dose.npz")  # round 0 only: margin, typicality and latents of every pool image, the dose's reference
    round_psi = _file("psi.json")  # round 0 only: psi of the shared round-0 model, measured once for every arm
    error = _file("error.txt")  # the traceback of a failed attempt
    worker = _file("worker.json")  # where and how often the job ran
    tracked = _file("tracked.json")  # what tracking (tracking: tensorboard) has written for this job

    def featvis(self, layer: str) -> Path:
        return self.folder / f"featvis-{layer}.npz"

    def featvis_files(self) -> list[Path]:
        return sorted(self.folder.glob("featvis-*.npz"))

    def round_model(self, round_: int) -> Path:  # weights after each round (sae.per_round)
        return self.folder / "rounds" / f"model{round_}.pt"

    def round_models(self) -> list[tuple[int, Path]]:
        """(round, weights file) of every kept round model, in round order."""
        found = [(int(p.stem[len("model"):]), p) for p in (self.folder / "rounds").glob("model*.pt")]
        return sorted(found)

    def trained_outputs(self) -> list[Path]:
        """Everything derived from the trained model: dropped together when the model must be trained again."""
        return [self.done, self.model, self.optimizer, self.analysis, self.sae, self.tsne, self.features,
                self.similarity, self.round_psi, self.dose, *self.featvis_files()]


class RunLayout:
    """The files and job folders of one run directory."""

    def __init__(self, path) -> None:
        self.path = Path(path)

    @property
    def root(self) -> Path:
        return self.path

    config = _file("config.yaml")
    manifest = _file("manifest.json")
    summary = _file("summary.json")
    rounds_csv = _file("rounds.csv")
    report = _file("report.html")
    classes = _file("classes.json")
    toy = _file("toy.json")
    lock_file = _file(".lock")

    def job(self, arm: str, seed: int) -> JobPaths:
        return JobPaths(self.path / "arms" / arm / f"seed{seed}")

    def tensorboard(self, arm: str, seed: int) -> Path:  # one TensorBoard run per (arm, seed)
        return self.path / "tensorboard" / arm / f"seed{seed}"

    def round0(self, seed: int) -> JobPaths:
        return JobPaths(self.path / "round0" / f"seed{seed}")

    def browse_page(self, arm: str, seed: int, layer: str) -> Path:  # superlens browse: one page per model and layer
        return self.path / "browse" / f"{arm}-seed{seed}-{layer}.html"

    def diff_dir(self, arm_a: str, arm_b: str, seed: int) -> Path:  # superlens diff: diff.json of one pair and seed
        return self.path / "diff" / f"{arm_a}-vs-{arm_b}" / f"seed{seed}"

    def diff_page(self, arm_a: str, arm_b: str, seed: int, layer: str) -> Path:
        return self.path / "browse" / f"diff-{arm_a}-vs-{arm_b}-seed{seed}-{layer}.html"

    def finished_arm_jobs(self) -> list[Path]:
        """``done.json`` of every finished (arm, seed) job."""
        return sorted(self.path.glob("arms/*/seed*/done.json"))
