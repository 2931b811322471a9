"""Active-learning jobs: rounds of score pool -> select -> label -> (re)train -> evaluate.

The arms of one seed are paired. Round 0 (initial weights, initial labelled set, the
model trained on it) is one job of its own per seed, ``round0/seed<k>``, whose
outputs every AL arm of that seed starts from, so their round-0 records are
identical. After it, every random draw of round r (training order, augmentation,
new initial weights, the strategy's generator) comes from a seed derived from
(seed, r) alone, so arms differ only by what their strategy chooses.

A job reads only its specs and the data, and writes only its own folder (its
``JobPaths``): the checkpoint (model, optimizer, pool, strategy state, records) after
every round, the pool and records beside it, and ``done`` when it has finished.
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
from superlens.data.dataset import DatasetSplits, ImageDataset
from superlens.errors import UserError
from superlens.fileio import atomic_path, read_json, write_json
from superlens.layout import JobPaths
from superlens.models import build_model
from superlens.specs import ActiveSpec, ModelSpec, Recipe, SnapshotSpec
from superlens.training import TrainResult, evaluate, fit, load_optimizer_state, make_optimizer


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
    device: torch.device, state: dict[str, Any], mc_rate: float = 0.5, mc_samples: int = 20,
) -> strategies.QueryInputs:
    """Everything ``needs`` asks for, from one evaluation pass (no augmentation) over the pool."""
    unlabeled = pool.unlabeled
    inputs = strategies.QueryInputs(pool_ids=unlabeled, labeled_ids=pool.labeled, state=state, device=device)
    if "network" in needs:  # the strategy runs the model's layers itself
        inputs.model, inputs.images, inputs.recipe = model, train, recipe
    if not needs - {"network"}:
        return inputs
    scored = np.concatenate([unlabeled, pool.labeled]) if "labeled_embeddings" in needs else unlabeled
    result = evaluate(model, train, recipe, device=device, indices=scored)  # gathered per batch, no pool copy
    n = len(unlabeled)
    inputs.probs = result.probs[:n]
    inputs.embeddings = result.embeddings[:n]
    if "labeled_embeddings" in needs:
        inputs.labeled_embeddings = result.embeddings[n:]
    if "mc_probs" in needs:
        inputs.mc_probs = mc_dropout_samples(result.embeddings[:n], model.fc, mc_rate, mc_samples, device)
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


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(_plain(payload), tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A job's ``checkpoint.pt``, read without unpickling code (a shared run directory need not be trusted)."""
    return _restored(torch.load(path, map_location="cpu", weights_only=True))


def _save_state_dict(path: Path, module_or_optimizer) -> None:
    state = module_or_optimizer.state_dict()
    if isinstance(module_or_optimizer, torch.nn.Module):
        state = {k: v.cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def query_batch(round_: int, queried: np.ndarray, scores: np.ndarray | None = None, probs: np.ndarray | None = None,
                ranked: bool = True) -> dict[str, np.ndarray]:
    """One round's queried images as query columns: training-set index, rank in the strategy's order
    (0 = first; -1 unranked, as the initial set), score (NaN when the strategy ranks by no score), and the
    model's predicted class and probability when it asked (``probs`` of the batch; -1 and NaN without)."""
    n = len(queried)
    return {"round": np.full(n, round_, np.int64), "index": np.asarray(queried, np.int64),
            "rank": np.arange(n, dtype=np.int64) if ranked else np.full(n, -1, np.int64),
            "score": np.asarray(scores, np.float64) if scores is not None else np.full(n, np.nan),
            "predicted": probs.argmax(1).astype(np.int64) if probs is not None else np.full(n, -1, np.int64),
            "confidence": probs.max(1).astype(np.float64) if probs is not None else np.full(n, np.nan)}


def save_queries(path: Path, queries: dict[str, np.ndarray], train: ImageDataset) -> None:
    """``queries.npz``: the query columns, with each image's stable id and true label."""
    index = queries["index"]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **queries, id=train.ids[index], label=train.labels.cpu().numpy()[index])


def _finish(paths: JobPaths, arm: str, seed: int, started: float, records, model, optimizer) -> list[dict[str, Any]]:
    _save_state_dict(paths.model, model)  # the final weights, for the analyses
    _save_state_dict(paths.optimizer, optimizer)  # for active learning that continues this model
    write_json(paths.done, {"arm": arm, "seed": seed, "seconds": time.perf_counter() - started, "records": records})
    paths.checkpoint.unlink(missing_ok=True)
    return records


def tail_classes(labels: np.ndarray, num_classes: int) -> np.ndarray | None:
    """A long-tailed pool's minority classes (fewer images than the median class); None for a pool whose largest
    class is less than twice its smallest (a balanced dataset's small differences are not a tail)."""
    counts = np.bincount(labels, minlength=num_classes)
    if counts.max() < 2 * max(1, counts.min()):
        return None
    tail = counts < np.median(counts)
    return tail if tail.any() else None


def _record(arm, seed, round_, n_labeled, test_result, query_s, train_s, trained: TrainResult | None,
            queried_labels, num_classes, previous: dict[str, Any] | None, tail: np.ndarray | None = None,
            labeled_labels: np.ndarray | None = None) -> dict[str, Any]:
    from superlens.analysis.calibration import balanced_accuracy, class_group_accuracy, expected_calibration_error

    hist, ent = class_histogram(queried_labels, num_classes) if len(queried_labels) else ([], None)
    minority = float(tail[queried_labels].mean()) if tail is not None and len(queried_labels) else None
    long_tail = {}
    if tail is not None:  # a long-tailed pool: how the labelled set and the classes at both ends fare
        long_tail = {"labeled_minority_share": float(tail[labeled_labels].mean()) if labeled_labels is not None else None,
                     "test_tail_accuracy": class_group_accuracy(test_result.probs, test_result.labels, tail),
                     "test_head_accuracy": class_group_accuracy(test_result.probs, test_result.labels, ~tail)}
    images = trained.images_seen if trained else 0
    steps = trained.steps if trained else 0
    return {
        "arm": arm, "seed": seed, "round": round_, "n_labeled": int(n_labeled),
        "n_queried": int(len(queried_labels)), "test_accuracy": test_result.accuracy, "test_loss": test_result.loss,
        "images_seen": images, "optimizer_steps": steps,
        "images_seen_total": images + (previous["images_seen_total"] if previous else 0),
        "optimizer_steps_total": steps + (previous["optimizer_steps_total"] if previous else 0),
        "query_seconds": query_s, "train_seconds": train_s, "query_class_hist": hist, "query_class_entropy": ent,
        "test_balanced_accuracy": balanced_accuracy(test_result.probs, test_result.labels),
        "test_ece": expected_calibration_error(test_result.probs, test_result.labels),
        "query_minority_share": minority, **long_tail,
    }


def _snapshot(snapshot: SnapshotSpec | None, model, splits: DatasetSplits, recipe, device) -> dict[str, float]:
    """The per-round metrics (``analysis.per_round``), or nothing when off."""
    if snapshot is None:
        return {}
    from superlens.analysis.snapshot import snapshot_metrics
    from superlens.data.dataset import fixed_subset

    return snapshot_metrics(model, fixed_subset(splits.test, snapshot.max_samples), snapshot, recipe, device)


def run_baseline(seed: int, paths: JobPaths, splits: DatasetSplits, device: torch.device, *, model: ModelSpec,
                 recipe: Recipe, snapshot: SnapshotSpec | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Train on the whole training split; writes the model, its optimizer and ``done`` (with the one record)."""
    paths.folder.mkdir(parents=True, exist_ok=True)
    if paths.done.exists():
        return read_json(paths.done)["records"]
    started = time.perf_counter()
    net = build_model(model, splits.train.num_classes, derive_seed(seed, "init"))
    torch.manual_seed(derive_seed(seed, "baseline", "train"))
    t0 = time.perf_counter()
    trained = fit(net, splits.train, recipe, seed=derive_seed(seed, "baseline", "train"), device=device,
                  progress=progress, desc=f"baseline seed {seed}")
    train_s = time.perf_counter() - t0
    result = evaluate(net, splits.test, recipe, device=device)
    row = _record("baseline", seed, 0, len(splits.train), result, 0.0, train_s, trained, np.array([], np.int64),
                  splits.train.num_classes, None)
    row.update(_snapshot(snapshot, net, splits, recipe, device))
    return _finish(paths, "baseline", seed, started, [row], net, trained.optimizer)


def _start_model(model: ModelSpec, active: ActiveSpec, seed: int, splits, baseline: JobPaths | None):
    """Round 0's model before training: the seed's initial weights, or the trained baseline's
    (``active.start_from_baseline``)."""
    net = build_model(model, splits.train.num_classes, derive_seed(seed, "init"))
    if active.start_from_baseline:
        # As the study's notebook did: active learning continues the trained baseline model.
        if baseline is None or not baseline.model.exists():
            where = baseline.folder if baseline is not None else "baseline"
            raise UserError(f"active.start_from_baseline needs the finished baseline job {where}; run the baseline arm first")
        net.load_state_dict(torch.load(baseline.model, map_location="cpu", weights_only=True))
    return net


def _initial(active: ActiveSpec, model, train: ImageDataset, labels: np.ndarray, recipe, device, seed: int) -> np.ndarray:
    """The initial labelled set: ``random``, ``balanced``, or chosen by a low-budget strategy
    (``typiclust``, ``probcover``) on the embeddings of the model before any training."""
    rng = np.random.default_rng(derive_seed(seed, "initial"))
    if active.initial in ("random", "balanced"):
        return initial_set(labels, active.initial_size, active.initial, rng)
    if active.initial_size > len(train):
        raise UserError(f"active.initial_size={active.initial_size} is larger than the training pool ({len(train)} images)")
    strategy = strategies.get(active.initial)
    result = evaluate(model, train, recipe, device=device)
    ids = np.arange(len(train))
    inputs = strategies.QueryInputs(probs=result.probs, embeddings=result.embeddings,
                                    labeled_embeddings=result.embeddings[:0], pool_ids=ids, labeled_ids=ids[:0],
                                    device=device)
    picked = strategy.select(inputs, active.initial_size, rng, **active.strategy_options.get(strategy.name, {}))
    return np.sort(ids[np.asarray(picked)])


def run_round0(seed: int, paths: JobPaths, splits: DatasetSplits, device: torch.device, *, model: ModelSpec,
               recipe: Recipe, active: ActiveSpec, snapshot: SnapshotSpec | None = None,
               baseline: JobPaths | None = None, progress: bool = True) -> dict[str, Any]:
    """The round 0 shared by every AL arm of ``seed``: initial set, model trained on it, its record.

    Writes the model, optimizer, pool and ``done`` (with the record) into ``paths``; a
    finished job is read back, not redone.
    """
    if paths.done.exists():
        return read_json(paths.done)
    paths.folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train, labels = splits.train, splits.train.labels.cpu().numpy()
    net = _start_model(model, active, seed, splits, baseline)
    optimizer = None
    if active.start_from_baseline:  # the baseline's optimizer state continues too
        optimizer = make_optimizer(net.to(device), recipe)
        load_optimizer_state(optimizer, torch.load(baseline.optimizer, map_location="cpu", weights_only=True))
    pool = Pool.empty(len(train))
    pool.acquire(_initial(active, net, train, labels, recipe, device, seed), 0)
    torch.manual_seed(derive_seed(seed, "round", 0))
    t0 = time.perf_counter()
    trained = None
    if len(pool.labeled) >= 2:
        trained = fit(net, train.subset(pool.labeled), recipe, seed=derive_seed(seed, "train", 0), device=device,
                      optimizer=optimizer, progress=progress, desc=f"round 0 seed {seed}")
        optimizer = trained.optimizer
    train_s = time.perf_counter() - t0
    result = evaluate(net, splits.test, recipe, device=device)
    record = _record(None, seed, 0, len(pool.labeled), result, 0.0, train_s, trained, np.array([], np.int64),
                     train.num_classes, None, tail_classes(labels, train.num_classes), labels[pool.labeled])
    record.update(_snapshot(snapshot, net, splits, recipe, device))
    _save_state_dict(paths.model, net)
    _save_state_dict(paths.optimizer, optimizer or make_optimizer(net.to(device), recipe))
    pool.save(paths.pool)
    save_queries(paths.queries, query_batch(0, pool.labeled, ranked=False), train)
    out = {"seed": seed, "seconds": time.perf_counter() - started, "record": record}
    write_json(paths.done, out)
    return out


def run_arm(arm: str, seed: int, paths: JobPaths, splits: DatasetSplits, device: torch.device, *, model: ModelSpec,
            recipe: Recipe, active: ActiveSpec, round0: JobPaths, snapshot: SnapshotSpec | None = None,
            baseline: JobPaths | None = None, keep_round_models: bool = False, checkpoint: dict[str, Any] | None = None,
            progress: bool = True, after_round: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Run (or finish) the active-learning rounds of ``arm`` from the finished ``round0`` of its seed.

    ``checkpoint``: the job's checkpoint when the caller has read it already (else it is
    read here when present); ``keep_round_models`` saves the weights after every round.
    """
    paths.folder.mkdir(parents=True, exist_ok=True)
    if paths.done.exists():
        return read_json(paths.done)["records"]
    started = time.perf_counter()
    name, replicate = strategies.parse_arm(arm)
    strategy = strategies.get(name)
    options = active.strategy_options.get(strategy.name, {})
    train, labels = splits.train, splits.train.labels.cpu().numpy()
    sizes = active.query_sizes(len(train))
    if not round0.done.exists():
        raise UserError(f"{arm} seed {seed} needs the finished round-0 job of its seed ({round0.folder})")
    net = _start_model(model, active, seed, splits, baseline)
    init_state = {k: v.clone() for k, v in net.state_dict().items()}
    if checkpoint is None and paths.checkpoint.exists():
        checkpoint = load_checkpoint(paths.checkpoint)
    if checkpoint is None:
        first = read_json(round0.done)["record"]
        pool = Pool(np.load(round0.pool))
        net.load_state_dict(torch.load(round0.model, map_location="cpu", weights_only=True))
        optimizer = make_optimizer(net.to(device), recipe)
        load_optimizer_state(optimizer, torch.load(round0.optimizer, map_location="cpu", weights_only=True))
        records, state, start, queries = [{**first, "arm": arm}], {}, 1, {}
        if keep_round_models:
            _save_state_dict(paths.round_model(0), net)
    else:
        pool = Pool(checkpoint["pool"])
        net.load_state_dict(checkpoint["model"])
        optimizer = make_optimizer(net.to(device), recipe)
        load_optimizer_state(optimizer, checkpoint["optimizer"])
        records, state, start = checkpoint["records"], checkpoint["strategy_state"], checkpoint["round"] + 1
        queries = checkpoint.get("queries", {})
    mc_rate = model.dropout or active.mc_dropout  # MC dropout at the model's own rate when it was trained with one
    for round_ in range(start, len(sizes) + 1):
        torch.manual_seed(derive_seed(seed, "round", round_))
        t0 = time.perf_counter()
        inputs = query_inputs(net, train, pool, strategy.needs, recipe, device, state, mc_rate, active.mc_samples)
        # a replicate (al-<strategy>@k) draws its own selection stream; everything else is shared with the arm
        rng = np.random.default_rng(derive_seed(seed, "query", round_) if replicate == 1
                                    else derive_seed(seed, "query", round_, "replicate", replicate))
        picked = np.asarray(strategy.select(inputs, sizes[round_ - 1], rng, **options))
        queried = inputs.pool_ids[picked]
        pool.acquire(queried, round_)
        query_s = time.perf_counter() - t0
        # the model's view of the batch: the pool's probabilities when the strategy had them, else one pass over it
        probs = inputs.probs[picked] if inputs.probs is not None else evaluate(net, train, recipe, device=device,
                                                                               indices=queried).probs
        new = query_batch(round_, queried, None if inputs.scores is None else inputs.scores[picked], probs)
        queries = {k: np.concatenate([queries[k], v]) if k in queries else v for k, v in new.items()}
        if active.reset == "scratch_same_init":
            net.load_state_dict(init_state)
            optimizer = None
        elif active.reset == "scratch_new_init":
            net = build_model(model, train.num_classes, derive_seed(seed, "init", round_))
            optimizer = None
        t0 = time.perf_counter()
        trained = fit(net, train.subset(pool.labeled), recipe, seed=derive_seed(seed, "train", round_), device=device,
                      optimizer=optimizer, progress=progress, desc=f"{arm} seed {seed} round {round_}")
        optimizer = trained.optimizer
        train_s = time.perf_counter() - t0
        result = evaluate(net, splits.test, recipe, device=device)
        row = _record(arm, seed, round_, len(pool.labeled), result, query_s, train_s, trained, labels[queried],
                      train.num_classes, records[-1], tail_classes(labels, train.num_classes), labels[pool.labeled])
        row.update(inputs.record)  # what the strategy says of its query (the lens strategies: their latents)
        row.update(_snapshot(snapshot, net, splits, recipe, device))
        records.append(row)
        save_checkpoint(paths.checkpoint, {
            "round": round_, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "pool": pool.acquired, "strategy_state": state, "records": records, "queries": queries,
        })
        save_queries(paths.queries, queries, train)
        if keep_round_models:
            _save_state_dict(paths.round_model(round_), net)
        pool.save(paths.pool)
        write_json(paths.records, records)
        if after_round is not None:
            after_round(round_)
    return _finish(paths, arm, seed, started, records, net, optimizer)
