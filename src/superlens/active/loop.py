"""Active-learning jobs: rounds of score pool -> select -> label -> (re)train -> evaluate.

The arms of one seed are paired. Round 0 (initial weights, initial labelled set, the
model trained on it) is one job of its own per seed, ``round0/seed<k>``, whose
outputs every AL arm of that seed starts from, so their round-0 records are
identical. After it, every random draw of round r (training order, augmentation,
new initial weights, the strategy's generator) comes from a seed derived from
(seed, r) alone, so arms differ only by what their strategy chooses.

A job reads only the resolved config and the data, and writes only its own folder:
``checkpoint.pt`` (model, optimizer, pool, strategy state, records) after every round,
``pool.npy`` and ``records.json`` beside it, and ``done.json`` when it has finished.
A job resumed from its last checkpoint makes exactly the draws an uninterrupted one makes.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from superlens.active import strategies
from superlens.active.pool import Pool, initial_set
from superlens.config import query_sizes
from superlens.data.dataset import DatasetSplits, ImageDataset
from superlens.errors import UserError
from superlens.fileio import atomic_path, read_json, write_json
from superlens.models import build_model
from superlens.training import Recipe, TrainResult, evaluate, fit, make_optimizer, make_recipe


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed that depends only on ``seed`` and the labels in ``parts``."""
    words = [seed] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> 1)


def class_histogram(labels: np.ndarray, num_classes: int) -> tuple[list[int], float]:
    """Counts per class of a queried batch and their entropy in nats."""
    counts = np.bincount(labels, minlength=num_classes)
    p = counts[counts > 0] / max(1, counts.sum())
    return counts.tolist(), float(-(p * np.log(p)).sum())


@torch.no_grad()
def query_inputs(
    model: torch.nn.Module, train: ImageDataset, pool: Pool, needs: frozenset[str], recipe: Recipe,
    cfg: dict[str, Any], device: torch.device, state: dict[str, Any],
) -> strategies.QueryInputs:
    """Everything ``needs`` asks for, from one evaluation pass (no augmentation) over the pool."""
    unlabeled = pool.unlabeled
    inputs = strategies.QueryInputs(pool_ids=unlabeled, labeled_ids=pool.labeled, state=state)
    if not needs:
        return inputs
    scored = np.concatenate([unlabeled, pool.labeled]) if "labeled_embeddings" in needs else unlabeled
    result = evaluate(model, train, recipe, device=device, indices=scored)  # gathered per batch, no pool copy
    n = len(unlabeled)
    inputs.probs = result.probs[:n]
    inputs.embeddings = result.embeddings[:n]
    if "labeled_embeddings" in needs:
        inputs.labeled_embeddings = result.embeddings[n:]
    if "mc_probs" in needs:
        # MC dropout at the head, at the model's own dropout rate when it was trained with one.
        rate = cfg["model"]["dropout"] or cfg["active"]["mc_dropout"]
        inputs.mc_probs = mc_dropout_samples(result.embeddings[:n], model.fc, rate, cfg["active"]["mc_samples"], device)
    return inputs


def mc_dropout_samples(embeddings: np.ndarray, head: torch.nn.Linear, rate: float, samples: int, device):
    """Yield ``samples`` (n, C) softmax arrays of the head under MC dropout on its input.

    Each sample draws one dropout mask and applies it to every image, i.e. it samples
    one thinned weight matrix of the head, as in the Bayesian reading of dropout.
    Memory stays at one (n, C) array per sample.
    """
    h = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(device)
    weight = head.weight.detach().float().to(device)
    bias = head.bias.detach().float().to(device)
    keep = (torch.rand(samples, weight.shape[1], device=device) >= rate).float() / (1.0 - rate)
    with torch.no_grad():
        for t in range(samples):
            yield torch.nn.functional.linear(h, weight * keep[t], bias).softmax(1).cpu().numpy()


_ARRAY = "__ndarray__"  # marks a numpy array stored as a tensor in a checkpoint


def _plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as marked tensors and numpy scalars as Python numbers, so that a
    checkpoint loads with ``weights_only=True`` (reading it runs no pickled code)."""
    if isinstance(obj, np.ndarray):
        return {_ARRAY: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _restored(obj: Any) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 1 and _ARRAY in obj:
            return obj[_ARRAY].numpy()
        return {k: _restored(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_restored(v) for v in obj)
    return obj


def _save_checkpoint(job_dir: Path, payload: dict[str, Any]) -> None:
    with atomic_path(job_dir / "checkpoint.pt") as tmp:
        torch.save(_plain(payload), tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A job's ``checkpoint.pt``, read without unpickling code (a shared run directory need not be trusted)."""
    return _restored(torch.load(path, map_location="cpu", weights_only=True))


def _load_checkpoint(job_dir: Path) -> dict[str, Any] | None:
    path = job_dir / "checkpoint.pt"
    return load_checkpoint(path) if path.exists() else None


def _save_state_dict(path: Path, module_or_optimizer) -> None:
    state = module_or_optimizer.state_dict()
    if isinstance(module_or_optimizer, torch.nn.Module):
        state = {k: v.cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def run_job(
    cfg: dict[str, Any], arm: str, seed: int, job_dir: Path, splits: DatasetSplits, device: torch.device,
    progress: bool = True, after_round: Callable[[int], None] | None = None, round0_dir: Path | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run (or finish) one job and return its per-round records.

    An AL arm needs ``round0_dir``, the finished round-0 job of its seed (see ``run_round0``).
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    done = job_dir / "done.json"
    if done.exists():
        return read_json(done)["records"]
    started = time.perf_counter()
    if arm == "baseline":
        records, model, optimizer = _baseline(cfg, seed, splits, device, progress)
    else:
        records, model, optimizer = _active(cfg, arm, seed, job_dir, splits, device, progress, after_round, round0_dir,
                                            checkpoint)
    _save_state_dict(job_dir / "model.pt", model)  # the final weights, for the analyses
    _save_state_dict(job_dir / "optimizer.pt", optimizer)  # for active learning that continues this model
    write_json(done, {"arm": arm, "seed": seed, "seconds": time.perf_counter() - started, "records": records})
    (job_dir / "checkpoint.pt").unlink(missing_ok=True)
    return records


def _record(arm, seed, round_, n_labeled, test_result, query_s, train_s, trained: TrainResult | None,
            queried_labels, num_classes, previous: dict[str, Any] | None) -> dict[str, Any]:
    hist, ent = class_histogram(queried_labels, num_classes) if len(queried_labels) else ([], None)
    images = trained.images_seen if trained else 0
    steps = trained.steps if trained else 0
    return {
        "arm": arm, "seed": seed, "round": round_, "n_labeled": int(n_labeled),
        "n_queried": int(len(queried_labels)), "test_accuracy": test_result.accuracy, "test_loss": test_result.loss,
        "images_seen": images, "optimizer_steps": steps,
        "images_seen_total": images + (previous["images_seen_total"] if previous else 0),
        "optimizer_steps_total": steps + (previous["optimizer_steps_total"] if previous else 0),
        "query_seconds": query_s, "train_seconds": train_s, "query_class_hist": hist, "query_class_entropy": ent,
    }


def _snapshot(cfg, model, splits: DatasetSplits, recipe, device) -> dict[str, float]:
    """The per-round superposition metrics (``analysis.per_round``), or nothing when off."""
    a = cfg["analysis"]
    if not (a["enabled"] and a["per_round"]):
        return {}
    from superlens.analysis.snapshot import analysis_subset, snapshot_metrics

    return snapshot_metrics(model, analysis_subset(splits.test, a), a, recipe, device)


def _baseline(cfg, seed, splits, device, progress):
    recipe = make_recipe(dict(cfg["recipe"]))
    model = build_model(cfg["model"], splits.train.num_classes, derive_seed(seed, "init"))
    torch.manual_seed(derive_seed(seed, "baseline", "train"))
    t0 = time.perf_counter()
    trained = fit(model, splits.train, recipe, seed=derive_seed(seed, "baseline", "train"), device=device,
                  progress=progress, desc=f"baseline seed {seed}")
    train_s = time.perf_counter() - t0
    result = evaluate(model, splits.test, recipe, device=device)
    row = _record("baseline", seed, 0, len(splits.train), result, 0.0, train_s, trained, np.array([], np.int64),
                  splits.train.num_classes, None)
    row.update(_snapshot(cfg, model, splits, recipe, device))
    return [row], model, trained.optimizer


def _start_model(cfg, seed, splits, baseline_dir: Path | None):
    """Round 0's model before training: the seed's initial weights, or the trained baseline's
    (``active.start_from_baseline``)."""
    model = build_model(cfg["model"], splits.train.num_classes, derive_seed(seed, "init"))
    if cfg["active"]["start_from_baseline"]:
        # As the study's notebook did: active learning continues the trained baseline model.
        if baseline_dir is None or not (baseline_dir / "model.pt").exists():
            raise UserError(f"active.start_from_baseline needs the finished baseline job {baseline_dir}; run the baseline arm first")
        model.load_state_dict(torch.load(baseline_dir / "model.pt", map_location="cpu", weights_only=True))
    return model


def _initial(cfg, model, train: ImageDataset, labels: np.ndarray, recipe, device, seed: int) -> np.ndarray:
    """The initial labelled set: ``random``, ``balanced``, or chosen by a low-budget strategy
    (``typiclust``, ``probcover``) on the embeddings of the model before any training."""
    a = cfg["active"]
    rng = np.random.default_rng(derive_seed(seed, "initial"))
    if a["initial"] in ("random", "balanced"):
        return initial_set(labels, a["initial_size"], a["initial"], rng)
    if a["initial_size"] > len(train):
        raise UserError(f"active.initial_size={a['initial_size']} is larger than the training pool ({len(train)} images)")
    strategy = strategies.get(a["initial"])
    result = evaluate(model, train, recipe, device=device)
    ids = np.arange(len(train))
    inputs = strategies.QueryInputs(probs=result.probs, embeddings=result.embeddings,
                                    labeled_embeddings=result.embeddings[:0], pool_ids=ids, labeled_ids=ids[:0])
    picked = strategy.select(inputs, a["initial_size"], rng, **a["strategy_options"].get(strategy.name, {}))
    return np.sort(ids[np.asarray(picked)])


def run_round0(cfg: dict[str, Any], seed: int, job_dir: Path, splits: DatasetSplits, device: torch.device,
               progress: bool = True, baseline_dir: Path | None = None) -> dict[str, Any]:
    """The round 0 shared by every AL arm of ``seed``: initial set, model trained on it, its record.

    Writes ``model.pt``, ``optimizer.pt``, ``pool.npy`` and ``done.json`` (with the
    record) into ``job_dir``; a finished job is read back, not redone.
    """
    done = job_dir / "done.json"
    if done.exists():
        return read_json(done)
    job_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    recipe = make_recipe(dict(cfg["recipe"]))
    train, labels = splits.train, splits.train.labels.cpu().numpy()
    model = _start_model(cfg, seed, splits, baseline_dir)
    optimizer = None
    if cfg["active"]["start_from_baseline"]:  # the baseline's optimizer state continues too
        optimizer = make_optimizer(model.to(device), recipe)
        optimizer.load_state_dict(torch.load(baseline_dir / "optimizer.pt", map_location="cpu", weights_only=True))
    pool = Pool.empty(len(train))
    pool.acquire(_initial(cfg, model, train, labels, recipe, device, seed), 0)
    torch.manual_seed(derive_seed(seed, "round", 0))
    t0 = time.perf_counter()
    trained = None
    if len(pool.labeled) >= 2:
        trained = fit(model, train.subset(pool.labeled), recipe, seed=derive_seed(seed, "train", 0), device=device,
                      optimizer=optimizer, progress=progress, desc=f"round 0 seed {seed}")
        optimizer = trained.optimizer
    train_s = time.perf_counter() - t0
    result = evaluate(model, splits.test, recipe, device=device)
    record = _record(None, seed, 0, len(pool.labeled), result, 0.0, train_s, trained, np.array([], np.int64),
                     train.num_classes, None)
    record.update(_snapshot(cfg, model, splits, recipe, device))
    _save_state_dict(job_dir / "model.pt", model)
    _save_state_dict(job_dir / "optimizer.pt", optimizer or make_optimizer(model.to(device), recipe))
    pool.save(job_dir / "pool.npy")
    out = {"seed": seed, "seconds": time.perf_counter() - started, "record": record}
    write_json(done, out)
    return out


def _active(cfg, arm, seed, job_dir, splits, device, progress, after_round, round0_dir, checkpoint=None):
    strategy = strategies.get(arm[3:])
    options = cfg["active"]["strategy_options"].get(strategy.name, {})
    recipe = make_recipe(dict(cfg["recipe"]))
    train, labels = splits.train, splits.train.labels.cpu().numpy()
    sizes = query_sizes(cfg["active"], len(train))
    reset = cfg["active"]["reset"]
    if round0_dir is None or not (round0_dir / "done.json").exists():
        raise UserError(f"{arm} seed {seed} needs the finished round-0 job of its seed ({round0_dir})")
    model = _start_model(cfg, seed, splits, job_dir.parent.parent / "baseline" / f"seed{seed}")
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    if checkpoint is None:  # none read by the caller already
        checkpoint = _load_checkpoint(job_dir)
    if checkpoint is None:
        round0 = read_json(round0_dir / "done.json")
        pool = Pool(np.load(round0_dir / "pool.npy"))
        model.load_state_dict(torch.load(round0_dir / "model.pt", map_location="cpu", weights_only=True))
        optimizer = make_optimizer(model.to(device), recipe)
        optimizer.load_state_dict(torch.load(round0_dir / "optimizer.pt", map_location="cpu", weights_only=True))
        records, state, start = [{**round0["record"], "arm": arm}], {}, 1
        _keep_round_model(cfg, job_dir, 0, model)
    else:
        pool = Pool(checkpoint["pool"])
        model.load_state_dict(checkpoint["model"])
        optimizer = make_optimizer(model.to(device), recipe)
        optimizer.load_state_dict(checkpoint["optimizer"])
        records, state, start = checkpoint["records"], checkpoint["strategy_state"], checkpoint["round"] + 1
    for round_ in range(start, len(sizes) + 1):
        torch.manual_seed(derive_seed(seed, "round", round_))
        t0 = time.perf_counter()
        inputs = query_inputs(model, train, pool, strategy.needs, recipe, cfg, device, state)
        rng = np.random.default_rng(derive_seed(seed, "query", round_))
        picked = np.asarray(strategy.select(inputs, sizes[round_ - 1], rng, **options))
        queried = inputs.pool_ids[picked]
        pool.acquire(queried, round_)
        query_s = time.perf_counter() - t0
        if reset == "scratch_same_init":
            model.load_state_dict(init_state)
            optimizer = None
        elif reset == "scratch_new_init":
            model = build_model(cfg["model"], train.num_classes, derive_seed(seed, "init", round_))
            optimizer = None
        t0 = time.perf_counter()
        trained = fit(model, train.subset(pool.labeled), recipe, seed=derive_seed(seed, "train", round_), device=device,
                      optimizer=optimizer, progress=progress, desc=f"{arm} seed {seed} round {round_}")
        optimizer = trained.optimizer
        train_s = time.perf_counter() - t0
        result = evaluate(model, splits.test, recipe, device=device)
        row = _record(arm, seed, round_, len(pool.labeled), result, query_s, train_s, trained, labels[queried],
                      train.num_classes, records[-1])
        row.update(_snapshot(cfg, model, splits, recipe, device))
        records.append(row)
        _save_checkpoint(job_dir, {
            "round": round_, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "pool": pool.acquired, "strategy_state": state, "records": records,
        })
        _keep_round_model(cfg, job_dir, round_, model)
        pool.save(job_dir / "pool.npy")
        write_json(job_dir / "records.json", records)
        if after_round is not None:
            after_round(round_)
    return records, model, optimizer


def _keep_round_model(cfg, job_dir: Path, round_: int, model) -> None:
    if cfg["sae"]["enabled"] and cfg["sae"]["per_round"]:
        _save_state_dict(job_dir / "rounds" / f"model{round_}.pt", model)
