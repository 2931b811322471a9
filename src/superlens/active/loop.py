"""One (arm, seed) job: rounds of score pool -> select -> label -> (re)train -> evaluate.

A job reads only the resolved config and the data, and writes only its own folder:
``checkpoint.pt`` (model, optimizer, pool, strategy state, records) after every round,
``pool.npy`` and ``records.json`` beside it, and ``done.json`` when it has finished.
Every random draw of a round comes from a seed derived from (seed, arm, round), so a
job resumed from its last checkpoint makes exactly the draws an uninterrupted one makes.
The model's initial weights and the initial labelled set depend on the seed alone,
so all arms of one seed start from the same point and can be compared pairwise.
"""

from __future__ import annotations

import json
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
from superlens.fileio import atomic_path, write_json
from superlens.models import load_weights, resnet18
from superlens.training import Recipe, evaluate, fit, make_optimizer, make_recipe


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed that depends only on ``seed`` and the labels in ``parts``."""
    words = [seed] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> 1)


def config_model(cfg: dict[str, Any], num_classes: int) -> torch.nn.Module:
    """The config's architecture, freshly initialized from the current torch seed, without weights."""
    m = cfg["model"]
    return resnet18(num_classes, stem=m["stem"], width=m["width"], dropout=m["dropout"])


def build_model(cfg: dict[str, Any], num_classes: int, seed: int) -> torch.nn.Module:
    """The config's model with initial weights drawn from ``seed`` (or the pretrained ones)."""
    torch.manual_seed(seed)
    model = config_model(cfg, num_classes)
    m = cfg["model"]
    if m["pretrained"]:
        load_weights(model, m["pretrained"])
    return model


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
    inputs = strategies.QueryInputs(pool_ids=unlabeled, state=state)
    if not needs:
        return inputs
    scored = np.concatenate([unlabeled, pool.labeled]) if "labeled_embeddings" in needs else unlabeled
    result = evaluate(model, train.subset(scored), recipe, device=device)
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


def _save_checkpoint(job_dir: Path, payload: dict[str, Any]) -> None:
    with atomic_path(job_dir / "checkpoint.pt") as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(job_dir: Path) -> dict[str, Any] | None:
    path = job_dir / "checkpoint.pt"
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def run_job(
    cfg: dict[str, Any], arm: str, seed: int, job_dir: Path, splits: DatasetSplits, device: torch.device,
    progress: bool = True, after_round: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or finish) one job and return its per-round records."""
    job_dir.mkdir(parents=True, exist_ok=True)
    done = job_dir / "done.json"
    if done.exists():
        return json.loads(done.read_text())["records"]
    started = time.perf_counter()
    if arm == "baseline":
        records, model, optimizer = _baseline(cfg, seed, splits, device, progress)
    else:
        records, model, optimizer = _active(cfg, arm, seed, job_dir, splits, device, progress, after_round)
    with atomic_path(job_dir / "model.pt") as tmp:  # the final weights, for the analyses
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    with atomic_path(job_dir / "optimizer.pt") as tmp:  # for active learning that continues this model
        torch.save(optimizer.state_dict(), tmp)
    write_json(done, {"arm": arm, "seed": seed, "seconds": time.perf_counter() - started, "records": records})
    (job_dir / "checkpoint.pt").unlink(missing_ok=True)
    return records


def _record(arm, seed, round_, pool, test_result, query_s, train_s, queried_labels, num_classes) -> dict[str, Any]:
    hist, ent = class_histogram(queried_labels, num_classes) if len(queried_labels) else ([], None)
    return {
        "arm": arm, "seed": seed, "round": round_, "n_labeled": int(len(pool.labeled)) if pool else None,
        "n_queried": int(len(queried_labels)), "test_accuracy": test_result.accuracy, "test_loss": test_result.loss,
        "query_seconds": query_s, "train_seconds": train_s, "query_class_hist": hist, "query_class_entropy": ent,
    }


def _baseline(cfg, seed, splits, device, progress):
    recipe = make_recipe(dict(cfg["recipe"]))
    model = build_model(cfg, splits.train.num_classes, derive_seed(seed, "init"))
    torch.manual_seed(derive_seed(seed, "baseline", "train"))
    t0 = time.perf_counter()
    optimizer = fit(model, splits.train, recipe, seed=derive_seed(seed, "baseline", "train"), device=device,
        progress=progress, desc=f"baseline seed {seed}").optimizer
    train_s = time.perf_counter() - t0
    result = evaluate(model, splits.test, recipe, device=device)
    row = _record("baseline", seed, 0, None, result, 0.0, train_s, np.array([], np.int64), splits.train.num_classes)
    row["n_labeled"] = len(splits.train)
    return [row], model, optimizer


def _active(cfg, arm, seed, job_dir, splits, device, progress, after_round):
    strategy = strategies.get(arm[3:])
    options = cfg["active"]["strategy_options"].get(strategy.name, {})
    recipe = make_recipe(dict(cfg["recipe"]))
    train, labels = splits.train, splits.train.labels.numpy()
    sizes = query_sizes(cfg["active"], len(train))
    reset = cfg["active"]["reset"]
    model = build_model(cfg, train.num_classes, derive_seed(seed, "init"))
    optimizer = None
    if cfg["active"]["start_from_baseline"]:
        # As the study's notebook did: active learning continues the trained baseline model.
        baseline = job_dir.parent.parent / "baseline" / f"seed{seed}"
        if not (baseline / "model.pt").exists():
            raise UserError(f"active.start_from_baseline needs the finished baseline job {baseline}; run the baseline arm first")
        model.load_state_dict(torch.load(baseline / "model.pt", map_location="cpu", weights_only=True))
        optimizer = make_optimizer(model.to(device), recipe)
        optimizer.load_state_dict(torch.load(baseline / "optimizer.pt", map_location="cpu", weights_only=True))
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint = _load_checkpoint(job_dir)
    if checkpoint is None:
        pool = Pool.empty(len(train))
        first = initial_set(labels, cfg["active"]["initial_size"], cfg["active"]["initial"],
                            np.random.default_rng(derive_seed(seed, "initial")))
        pool.acquire(first, 0)
        records, state, start = [], {}, 0
    else:
        pool = Pool(checkpoint["pool"])
        model.load_state_dict(checkpoint["model"])
        optimizer = make_optimizer(model.to(device), recipe)
        optimizer.load_state_dict(checkpoint["optimizer"])
        records, state, start = checkpoint["records"], checkpoint["strategy_state"], checkpoint["round"] + 1
    for round_ in range(start, len(sizes) + 1):
        torch.manual_seed(derive_seed(seed, arm, "round", round_))
        queried, query_s = np.array([], dtype=np.int64), 0.0
        if round_ > 0:
            t0 = time.perf_counter()
            inputs = query_inputs(model, train, pool, strategy.needs, recipe, cfg, device, state)
            rng = np.random.default_rng(derive_seed(seed, arm, "query", round_))
            picked = np.asarray(strategy.select(inputs, sizes[round_ - 1], rng, **options))
            queried = inputs.pool_ids[picked]
            pool.acquire(queried, round_)
            query_s = time.perf_counter() - t0
            if reset == "scratch_same_init":
                model.load_state_dict(init_state)
                optimizer = None
            elif reset == "scratch_new_init":
                model = build_model(cfg, train.num_classes, derive_seed(seed, "init", round_))
                optimizer = None
        t0 = time.perf_counter()
        labeled = train.subset(pool.labeled)
        if len(labeled) >= 2:
            optimizer = fit(model, labeled, recipe, seed=derive_seed(seed, arm, "train", round_), device=device,
                            optimizer=optimizer, progress=progress, desc=f"{arm} seed {seed} round {round_}").optimizer
        train_s = time.perf_counter() - t0
        result = evaluate(model, splits.test, recipe, device=device)
        records.append(_record(arm, seed, round_, pool, result, query_s, train_s, labels[queried], train.num_classes))
        optimizer = optimizer or make_optimizer(model.to(device), recipe)
        _save_checkpoint(job_dir, {
            "round": round_, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "pool": pool.acquired, "strategy_state": state, "records": records,
        })
        if cfg["sae"]["enabled"] and cfg["sae"]["per_round"]:
            with atomic_path(job_dir / "rounds" / f"model{round_}.pt") as tmp:
                torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
        pool.save(job_dir / "pool.npy")
        write_json(job_dir / "records.json", records)
        if after_round is not None:
            after_round(round_)
    return records, model, optimizer
