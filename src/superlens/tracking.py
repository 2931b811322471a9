"""Optional live tracking of a study's jobs: ``tracking: tensorboard`` or ``tracking: wandb`` (default ``none``).

Each (arm, seed) job is one tracked run: every numeric ``rounds.csv`` column as ``rounds/<column>``
at step = labelled images, as each round finishes; the SAE stage's loss curves (``sae/<curve>`` at
step = SAE step) and psi per round (``sae/psi_per_round``, step = labelled images) when it
finishes; the resolved config. What a job has written is listed in its folder's
``tracked.json``, so a resumed job writes nothing twice.

TensorBoard: one event folder per job, ``<run>/tensorboard/<arm>/seed<k>/``, the config as text.
Weights & Biases: runs under ``<run>/wandb/``, offline unless ``WANDB_MODE`` says otherwise,
project ``WANDB_PROJECT`` (default ``superlens``), grouped by the run folder's name, named and
tagged by arm and seed, the config attached as the run's config; each quantity carries its own
step key (``n_labeled`` or ``sae_step``). A job's run stays open from its first round to its end
(one offline folder per job and process); a resumed job continues the same W&B run (its id is
kept in ``tracked.json``), in a new offline folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superlens.errors import UserError
from superlens.fileio import read_json, write_json

CHOICES = ("none", "tensorboard", "wandb")
SKIPPED = ("arm", "seed", "round", "n_labeled", "query_class_hist")
_OPEN: dict[Path, Any] = {}  # a job's open writer, by its ledger
_PACKAGES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def check_available(tracking: str) -> None:
    """One line before anything runs when the chosen tracker's package is missing."""
    if tracking in _PACKAGES:
        import importlib

        module, extra = _PACKAGES[tracking]
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(f"tracking={tracking} needs the {extra} package: pip install 'superlens[{extra}]'"
                            ) from None


@dataclass(frozen=True)
class Tracking:
    """Where one job's tracking goes."""

    kind: str  # "tensorboard" or "wandb"
    log_dir: Path  # tensorboard: <run>/tensorboard/<arm>/seed<k>; wandb: <run> (W&B writes <run>/wandb/)
    config: Path  # the run's config.yaml
    ledger: Path  # the job folder's tracked.json
    group: str = ""  # the study (run folder) name
    arm: str = ""
    seed: int = 0

    def _written(self) -> dict[str, Any]:
        return read_json(self.ledger) if self.ledger.exists() else {"rounds": [], "sae": False, "config": False}

    def _sink(self, done: dict[str, Any]):
        """The job's open writer (one per job and process: a W&B run stays one run until ``finish``)."""
        if self.ledger not in _OPEN:
            _OPEN[self.ledger] = _WandB(self, done) if self.kind == "wandb" else _TensorBoard(self.log_dir)
        return _OPEN[self.ledger]

    def finish(self) -> None:
        """Close the job's writer, if one is open (the job ended, or stopped)."""
        sink = _OPEN.pop(self.ledger, None)
        if sink is not None:
            sink.close()

    def rounds(self, records: list[dict[str, Any]]) -> None:
        """The rows of ``records`` not yet written (and the config, the first time)."""
        done = self._written()
        new = [r for r in records if r["round"] not in done["rounds"]]
        if not new and done["config"]:
            return
        sink = self._sink(done)
        if not done["config"] and self.config.exists():
            sink.config(self.config.read_text())
            done["config"] = True
        for row in new:
            for key, value in row.items():
                if key not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                    sink.scalar(f"rounds/{key}", value, row["n_labeled"], "n_labeled")
            done["rounds"].append(row["round"])
        sink.flush()
        write_json(self.ledger, done)

    def sae(self, curves: dict[str, list[tuple[int, float]]], per_round: list[dict[str, Any]]) -> None:
        """The SAE stage's loss curves and psi per round, once."""
        done = self._written()
        if done["sae"]:
            return
        sink = self._sink(done)
        for name, points in curves.items():
            for step, loss in points:
                sink.scalar(f"sae/{name}", loss, step, "sae_step")
        for row in per_round:
            sink.scalar("sae/psi_per_round", row["psi"], row["n_labeled"] or row["round"], "n_labeled")
        sink.flush()
        done["sae"] = True
        write_json(self.ledger, done)


class _TensorBoard:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def config(self, text: str) -> None:
        self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def scalar(self, tag: str, value: float, step: int, step_name: str) -> None:
        self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, tracking: Tracking, done: dict[str, Any]) -> None:
        import secrets

        import wandb

        done.setdefault("wandb_id", secrets.token_hex(8))  # kept in the ledger: a resumed job continues it
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "superlens"), group=tracking.group,
                              name=f"{tracking.arm}-seed{tracking.seed}", tags=[tracking.arm, f"seed{tracking.seed}"],
                              id=done["wandb_id"], resume="allow", dir=str(tracking.log_dir),
                              mode=os.environ.get("WANDB_MODE", "offline"),
                              settings=wandb.Settings(silent=True, console="off"))
        self.defined: set[str] = set()

    def config(self, text: str) -> None:
        import yaml

        self.run.config.update(yaml.safe_load(text), allow_val_change=True)

    def scalar(self, tag: str, value: float, step: int, step_name: str) -> None:
        if tag not in self.defined:
            self.run.define_metric(step_name, hidden=True)
            self.run.define_metric(tag, step_metric=step_name)
            self.defined.add(tag)
        self.run.log({tag: value, step_name: step})

    def flush(self) -> None:
        pass  # an offline run's records reach its file as they are logged

    def close(self) -> None:
        self.run.finish()


def curve_recorder(points: list[tuple[int, float]], then=None):
    """A ``train_sae``/``train_saes`` progress callback that appends (step, loss) to ``points`` and passes
    the call on to ``then``."""

    def record(step: int, loss: float, eta: float) -> None:
        points.append((int(step), float(loss)))
        if then is not None:
            then(step, loss, eta)
    return record
