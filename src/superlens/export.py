"""The images an active-learning arm queried, for a person or a labelling tool: ``superlens queries``.

Every AL job keeps ``queries.npz`` (round, training-set index, stable id, true label, rank in
the strategy's order, score, the model's predicted class and probability when it asked);
round 0's initial set is in the round-0 job of the seed. Rows here carry class names.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from superlens.errors import UserError
from superlens.rundir import RunDir

COLUMNS = ("round", "rank", "id", "index", "label", "predicted", "confidence", "score")


def query_rows(run_dir: str | Path, arm: str, seed: int, round_: int | None = None) -> list[dict[str, Any]]:
    """The queried images of ``arm``/``seed`` (of one round when given), in query order.

    ``label`` and ``predicted`` are class names (``predicted`` is empty for round 0, queried
    before any model was trained); ``score`` is empty for a strategy that ranks by no score."""
    run = RunDir(run_dir)
    if not run.config.exists():
        raise UserError(f"{run.path} is not a run directory (no config.yaml)")
    cfg = run.read_config()
    arms = [a for a in cfg["arms"] if a != "baseline"]
    if arm not in arms:
        raise UserError(f"unknown arm {arm!r}; the active-learning arms of this run: {', '.join(arms) or 'none'}")
    if seed not in cfg["seeds"]:
        raise UserError(f"unknown seed {seed}; the seeds of this run: {', '.join(map(str, cfg['seeds']))}")
    parts = [_read(run.round0(seed).queries), _read(run.job(arm, seed).queries)]
    if parts[1] is None:
        raise UserError(f"{arm} seed {seed} has no saved queries yet ({run.job(arm, seed).queries}): the job has not "
                        "finished a round, or ran with a superlens that did not save them")
    q = {k: np.concatenate([p[k] for p in parts if p is not None]) for k in parts[1]}
    rounds = sorted(set(q["round"].tolist()))
    if round_ is not None:
        if round_ not in rounds:
            raise UserError(f"{arm} seed {seed} has no round {round_}; its rounds: {', '.join(map(str, rounds))}")
        q = {k: v[q["round"] == round_] for k, v in q.items()}
    classes = json.loads(run.classes.read_text()) if run.classes.exists() else None

    def name(c: int) -> str:
        return "" if c < 0 else (classes[c] if classes else str(c))

    return [{"round": int(q["round"][i]), "rank": int(q["rank"][i]) if q["rank"][i] >= 0 else "",
             "id": str(q["id"][i]), "index": int(q["index"][i]), "label": name(int(q["label"][i])),
             "predicted": name(int(q["predicted"][i])),
             "confidence": "" if np.isnan(q["confidence"][i]) else float(q["confidence"][i]),
             "score": "" if np.isnan(q["score"][i]) else float(q["score"][i])} for i in range(len(q["round"]))]


def _read(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is corrupt ({type(exc).__name__}); delete it and resume the run") from None


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_labelstudio(rows: list[dict[str, Any]], images: dict[str, str], model_version: str) -> str:
    """Label Studio tasks (JSON): per image its ``image`` (URL, path or data URI), id and round, and, when the
    model had made one, a prediction for a ``<Choices name="label" toName="image">`` control."""
    tasks = []
    for row in rows:
        task: dict[str, Any] = {"data": {"image": images[row["id"]], "superlens_id": row["id"], "round": row["round"],
                                         "true_label": row["label"]}}
        if row["predicted"]:
            task["predictions"] = [{
                "model_version": model_version, "score": row["confidence"],
                "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                            "value": {"choices": [row["predicted"]]}}],
            }]
        tasks.append(task)
    return json.dumps(tasks, indent=1) + "\n"


def image_sources(run_dir: str | Path, ids: list[str], image_root: str | None) -> dict[str, str]:
    """Each id's image for a labelling tool: ``image_root``/id when given (datasets of files, whose ids are
    paths), else a PNG data URI of the image itself, read from the run's dataset."""
    if image_root is not None:
        return {i: f"{image_root.rstrip('/')}/{i}" for i in ids}
    from PIL import Image

    from superlens.data import load_spec
    from superlens.specs import DataSpec

    cfg = RunDir(run_dir).read_config()
    train = load_spec(DataSpec.from_section(cfg["data"])).train
    where = {name: k for k, name in enumerate(train.ids.tolist())}
    out = {}
    for i in ids:
        if i not in where:
            raise UserError(f"image {i!r} is not in the run's training set as loaded now; was the dataset changed?")
        buf = io.BytesIO()
        Image.fromarray(train.images[where[i]].permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
        out[i] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return out
