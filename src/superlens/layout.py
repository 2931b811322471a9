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


@dataclass(frozen=True)
class JobPaths:
    """The files of one job folder."""

    folder: Path

    @property
    def model(self) -> Path:  # final weights (state dict)
        return self.folder / "model.pt"

    @property
    def optimizer(self) -> Path:  # optimizer state, for a job that continues this model
        return self.folder / "optimizer.pt"

    @property
    def checkpoint(self) -> Path:  # model, optimizer, pool, strategy state and records after the last round
        return self.folder / "checkpoint.pt"

    @property
    def pool(self) -> Path:  # round in which each training image was labelled (-1: never)
        return self.folder / "pool.npy"

    @property
    def records(self) -> Path:  # per-round records so far
        return self.folder / "records.json"

    @property
    def done(self) -> Path:  # written last by training: the job's records, and that it finished
        return self.folder / "done.json"

    @property
    def analysis(self) -> Path:
        return self.folder / "analysis.json"

    @property
    def tsne(self) -> Path:
        return self.folder / "tsne.npz"

    @property
    def sae(self) -> Path:
        return self.folder / "sae.json"

    @property
    def similarity(self) -> Path:  # CKA against al-random's model of the same seed
        return self.folder / "similarity.json"

    @property
    def error(self) -> Path:  # the traceback of a failed attempt
        return self.folder / "error.txt"

    @property
    def worker(self) -> Path:  # where and how often the job ran
        return self.folder / "worker.json"

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
        return [self.done, self.model, self.optimizer, self.analysis, self.sae, self.tsne, self.similarity,
                *self.featvis_files()]


class RunLayout:
    """The files and job folders of one run directory."""

    def __init__(self, path) -> None:
        self.path = Path(path)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def rounds_csv(self) -> Path:
        return self.path / "rounds.csv"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def classes(self) -> Path:
        return self.path / "classes.json"

    @property
    def toy(self) -> Path:
        return self.path / "toy.json"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def job(self, arm: str, seed: int) -> JobPaths:
        return JobPaths(self.path / "arms" / arm / f"seed{seed}")

    def round0(self, seed: int) -> JobPaths:
        return JobPaths(self.path / "round0" / f"seed{seed}")

    def finished_arm_jobs(self) -> list[Path]:
        """``done.json`` of every finished (arm, seed) job."""
        return sorted(self.path.glob("arms/*/seed*/done.json"))
