import csv
from dataclasses import asdict
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from superlens.active.curves import aubc, label_efficiency, labels_to_reach
from superlens.active.loop import load_checkpoint
from superlens.fileio import read_json
from superlens.active.pool import Pool, initial_set
from superlens.config import load_config
from superlens.specs import ActiveSpec
from superlens.errors import UserError
from superlens.rundir import RunDir
from superlens.study import run_study

TINY = [
    "workers=1",  # one job at a time in the test process (the demo preset runs two side by side)
    "seeds=[0,1]", "model.width=4", "recipe.epochs=1", "recipe.batch_size=128",
    "active.initial_size=40", "active.query_size=40", "active.rounds=2", "analysis.enabled=false",
    "featvis.enabled=false", "sae.enabled=false", "toy.enabled=false",
]
TIMING = ("query_seconds", "train_seconds")
# the strategies that fit a latent lens each query, at sizes that test the path, not the lens
LENS_OPTIONS = [f"active.strategy_options.{name}.{key}={value}" for name in ("latent_coverage", "interference")
                for key, value in (("fit_images", 60), ("steps", 20), ("batch_size", 64))]


def tiny_config(*extra):
    return load_config("demo", [*TINY, *extra])


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_curves_known_answers():
    assert aubc([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert aubc([5], [0.4]) == pytest.approx(0.4)
    assert labels_to_reach([100, 200, 300], [0.5, 0.7, 0.9], 0.8) == pytest.approx(250)
    assert np.isnan(labels_to_reach([100, 200], [0.5, 0.6], 0.9))
    # the strategy reaches at 200 what random reaches at 300: 1.5 there; 1.0 at the start
    eff = label_efficiency([100, 200], [0.5, 0.9], [100, 200, 300], [0.5, 0.7, 0.9])
    assert eff == pytest.approx(1.5)


def test_initial_set_and_pool_bookkeeping():
    labels = np.repeat(np.arange(5), 20)
    first = initial_set(labels, 23, "balanced", np.random.default_rng(0))
    assert len(first) == len(set(first)) == 23
    assert (np.bincount(labels[first], minlength=5) >= 4).all()
    pool = Pool.empty(100)
    pool.acquire(first, 0)
    assert len(pool.labeled) == 23 and len(pool.unlabeled) == 77
    with pytest.raises(ValueError, match="already labelled"):
        pool.acquire(first[:1], 1)
    with pytest.raises(UserError, match="larger than the training pool"):
        initial_set(labels, 101, "random", np.random.default_rng(0))


def test_budget_checks():
    cfg = tiny_config()
    assert ActiveSpec.from_section(cfg["active"]).query_sizes(200) == [40, 40]
    with pytest.raises(UserError, match="budget .* is larger than the training pool"):
        ActiveSpec.from_section(cfg["active"]).query_sizes(100)
    exhaust = tiny_config("active.rounds=exhaust")
    assert ActiveSpec.from_section(exhaust["active"]).query_sizes(150) == [40, 40, 30]


def test_config_errors_are_clear():
    with pytest.raises(UserError, match="unknown strategy 'greedy' in arm 'al-greedy'; known: random"):
        load_config("demo", ["arms=[baseline,al-greedy]"])
    with pytest.raises(UserError, match="zero rounds"):
        load_config("demo", ["active.rounds=0"])
    with pytest.raises(UserError, match="unknown or invalid config key 'active.roundz'"):
        load_config("demo", ["active.roundz=3"])
    with pytest.raises(UserError, match="unknown recipe key 'epoch'"):
        load_config("demo", ["recipe.epoch=3"])
    with pytest.raises(UserError, match="neither a preset"):
        load_config("no-such-preset")
    with pytest.raises(UserError, match="key=value"):
        load_config("demo", ["active.rounds"])
    with pytest.raises(UserError, match="strategy 'cluster_margin' has no option 'clusters'; its options: margin_multiplier, n_clusters"):
        load_config("demo", ["active.strategy_options.cluster_margin.clusters=3"])


def test_resume_reproduces_the_uninterrupted_study(tmp_path):
    cfg = tiny_config("arms=[al-least_confidence,al-coreset]", "seeds=[0]")
    whole = run_study(cfg, tmp_path / "whole", progress=False, log=lambda *_: None)

    # interrupt the second job after its first query round
    import superlens.study.stages as stages

    real = stages.train_arm

    def interrupting(job, splits, device, progress=False, checkpoint=None, after_round=None):
        def stop(round_):
            if job.arm == "al-coreset" and round_ == 1:
                raise KeyboardInterrupt
        return real(job, splits, device, progress, checkpoint, stop)

    stages.train_arm = interrupting
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(cfg, tmp_path / "cut", progress=False, log=lambda *_: None)
    finally:
        stages.train_arm = real
    cut = RunDir(tmp_path / "cut")
    assert (cut.job("al-least_confidence", 0).done).exists()
    assert load_checkpoint(cut.job("al-coreset", 0).checkpoint)["round"] == 1
    import torch

    real_load, checkpoint_reads = torch.load, []

    def counting_load(f, *args, **kwargs):
        checkpoint_reads.append(str(f).endswith("checkpoint.pt"))
        return real_load(f, *args, **kwargs)

    torch.load = counting_load
    try:
        resumed = run_study(cut.read_config(), cut.path, progress=False, log=lambda *_: None)
    finally:
        torch.load = real_load
    assert sum(checkpoint_reads) == 1  # checked and resumed from one read
    assert resumed["arms"] == whole["arms"]
    for arm in cfg["arms"]:
        a = json.loads((RunDir(tmp_path / "whole").job(arm, 0).done).read_text())["records"]
        b = json.loads((cut.job(arm, 0).done).read_text())["records"]
        assert strip_timing(a) == strip_timing(b)
        pa = np.load(RunDir(tmp_path / "whole").job(arm, 0).pool)
        pb = np.load(cut.job(arm, 0).pool)
        assert np.array_equal(pa, pb)


@pytest.mark.parametrize("reset", ["scratch_same_init", "scratch_new_init"])
def test_reset_modes_run_and_keep_pools_disjoint(tmp_path, reset):
    cfg = tiny_config("arms=[al-margin]", "seeds=[0]", f"active.reset={reset}")
    run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    pool = np.load(RunDir(tmp_path).job("al-margin", 0).pool)
    assert np.bincount(pool[pool >= 0]).tolist() == [40, 40, 40]  # each image acquired at most once


def test_run_dir_of_another_config_and_lock(tmp_path):
    run_study(tiny_config("arms=[baseline]", "seeds=[0]"), tmp_path, progress=False, log=lambda *_: None)
    with pytest.raises(UserError, match="belongs to a different config .*'model.width'"):
        run_study(tiny_config("arms=[baseline]", "seeds=[0]", "model.width=8"), tmp_path, progress=False)
    import fcntl

    with open(tmp_path / ".lock", "a+") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="in use by another superlens process"):
            run_study(tiny_config("arms=[baseline]", "seeds=[0]"), tmp_path, progress=False)


def test_run_command_writes_the_contract_files(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(["run", "demo", *TINY, "active.strategy_options.least_confidence={}",
                                 "analysis.enabled=true", "analysis.max_samples=200", "analysis.probe_samples=300",
                                 "sae.enabled=true", "sae.max_images=100", "sae.settings.steps=20",
                                 "sae.settings.batch_size=256", "sae.superposition.max_steps=100",
                                 "sae.superposition.window=50", "toy.enabled=true", "toy.steps=30", "toy.phase_grid=2",
                                 "toy.selection={sparsity: 0.9, pool: 400, budget: 100, initial: 50}",
                                 "--out", out, "--quiet"], capsys)
    assert code == 0, err
    for name in ("config.yaml", "manifest.json", "summary.json", "rounds.csv", "report.html"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("silhouette_tsne", "silhouette_features", "davies_bouldin_tsne", "davies_bouldin_features",
                "cosine_mean", "class_selectivity_mean", "nc1", "knn_accuracy", "linear_probe_accuracy"):
        assert key in summary["arms"]["baseline"] and f"{key}_ci95" in summary["arms"]["baseline"], key
    assert summary["arms"]["al-random"]["vs_baseline"]["cosine_mean"]["p_value"] <= 1
    for key in ("psi", "psi_sae_sd", "features_per_neuron", "sae_stable_fraction", "sae_fvu", "sae_l0",
                "sae_recovered_vs_zero", "sae_latent_class_selectivity_mean"):
        assert key in summary["arms"]["al-least_confidence"], key
    assert "sae_effective_features" not in summary["arms"]["al-least_confidence"]  # psi appears once
    cka = summary["arms"]["al-least_confidence"]["cka_vs_random"]["layer4"]
    assert 0 <= cka["mean"] <= 1 and len(cka["per_seed"]) == 2
    assert summary["primary"]["metric"] == "psi" and "al-least_confidence" in summary["primary"]["arms"]
    assert set(summary["arms"]["al-least_confidence"]["vs_random_matched"]) >= {"silhouette_features", "nc1"}
    assert json.loads((out / "toy.json").read_text())["m"] == 5
    html = (out / "report.html").read_text()
    for section in ("Primary endpoint: psi", "Setup", "Accuracy against labels", "Superposition (layer4)",
                    "Representation similarity to al-random", "Representation quality (class separation)",
                    "Other metrics per arm", "t-SNE", "Cosine similarity", "Neuron polysemanticity",
                    "What each strategy queried", "Decoding superposition", "Toy models of superposition",
                    "at equal test accuracy", "Does a selection act only through the composition of its data?",
                    "Data points or features?", "The lens strategies where features are known"):
        assert section in html, section
    assert html.count("data:image/png;base64,") == 9  # with the toy questions' memorisation curve
    assert "Verdict: each strategy against random sampling" in html
    assert "src=\"http" not in html and "href=\"http" not in html  # self-contained
    assert set(summary["arms"]) == {"baseline", "al-least_confidence", "al-random"}
    for arm, metrics in summary["arms"].items():
        assert 0 <= metrics["test_accuracy"] <= 1 and len(metrics["test_accuracy_ci95"]) == 2
        assert metrics["seeds"] == [0, 1]
    assert summary["arms"]["al-random"]["n_labeled"] == 120
    rows = list(csv.DictReader(open(out / "rounds.csv")))
    assert len(rows) == 2 + 2 * 2 * 3  # baseline: one row per seed; AL: 3 rounds per seed
    assert summary["arms"]["al-least_confidence"]["vs_random"]["test_accuracy"]["seeds"] == [0, 1]
    queried = [r for r in rows if r["arm"] == "al-random" and r["round"] == "1"][0]
    assert sum(int(c) for c in queried["query_class_hist"].split()) == 40
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1] and "torch" in manifest and len(manifest["job_seconds"]) == 6
    from superlens.hardware import cpu_bf16_units

    assert manifest["precision"]["autocast"] == ("bfloat16" if cpu_bf16_units() else "float32")
    job = out / "arms" / "al-least_confidence" / "seed0"
    for name in ("analysis.json", "sae.json"):  # activations are captured in full precision on the CPU
        assert json.loads((job / name).read_text())["capture_dtype"] == "float32", name
    for arm in ("baseline", "al-least_confidence", "al-random"):
        for seed in (0, 1):
            assert (out / "arms" / arm / f"seed{seed}" / "done.json").exists()
    # resume of a finished run recomputes nothing and reports the same numbers; as if the run had been
    # started by other code, the manifest keeps that revision before this one
    (out / "manifest.json").write_text(json.dumps({**manifest, "git_revision": "0" * 40, "git_revisions": ["0" * 40]}))
    code, stdout2, _ = run_cli(["resume", out, "--quiet"], capsys)
    assert code == 0 and json.loads((out / "summary.json").read_text())["arms"] == summary["arms"]
    resumed = json.loads((out / "manifest.json").read_text())
    assert resumed["git_revisions"][0] == "0" * 40
    if resumed["git_revision"] is not None:  # a checkout with git: this invocation's revision follows
        assert resumed["git_revisions"] == ["0" * 40, resumed["git_revision"]]
        assert "earlier parts by 0000000" in (out / "report.html").read_text()
    code, _, err = run_cli(["resume", tmp_path / "nothing-here"], capsys)
    assert code == 2 and "not a superlens run directory" in err
    (out / "report.html").unlink()
    code, stdout3, _ = run_cli(["report", out], capsys)
    assert code == 0 and (out / "report.html").exists() and "wrote" in stdout3


def test_cli_budget_error_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["run", "demo", "active.query_size=1000", "--out", tmp_path, "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "larger than the training pool" in err


def test_every_strategy_runs_in_the_engine(tmp_path):
    from superlens.active.strategies import REGISTRY

    arms = ",".join(f"al-{name}" for name in REGISTRY)
    cfg = tiny_config(f"arms=[{arms}]", "seeds=[0]", "active.rounds=1", "recipe.epochs=1",
                      "active.strategy_options.cluster_margin.n_clusters=5", *LENS_OPTIONS)
    summary = run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    assert set(summary["arms"]) == {f"al-{name}" for name in REGISTRY}
    for name in REGISTRY:
        pool = np.load(RunDir(tmp_path).job(f"al-{name}", 0).pool)
        assert (pool == 0).sum() == 40 and (pool == 1).sum() == 40
    for name in ("latent_coverage", "interference"):  # the lens says what it looked through
        row = read_json(RunDir(tmp_path).job(f"al-{name}", 0).done)["records"][1]
        used, found = row["lens_latents"], row["lens_reproduced"]  # width 4: 32 channels, 128 latents
        assert (used == found >= 16) or (used == 128 and found < 16), row


def test_unknown_analysis_layer_fails_before_training(tmp_path, capsys):
    code, _, err = run_cli(["run", "demo", "analysis.layer=layer5", "--out", tmp_path, "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "unknown layer 'layer5'; available: conv1, bn1" in err
    assert not (tmp_path / "arms").exists()


def test_psi_per_active_learning_round(tmp_path):
    cfg = tiny_config("arms=[al-random,al-random@2]", "seeds=[0]", "data.train_subset=600", "sae.enabled=true",
                      "sae.per_round=true",
                      "sae.stability=false", "sae.max_images=100", "sae.settings.steps=5", "sae.settings.batch_size=64",
                      "sae.superposition.max_steps=100", "sae.superposition.window=50", "sae.superposition.batch_size=64")
    run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    run = RunDir(tmp_path)
    sae = json.loads(run.job("al-random", 0).sae.read_text())
    assert [r["round"] for r in sae["per_round"]] == [0, 1, 2]
    assert [r["n_labeled"] for r in sae["per_round"]] == [40, 80, 120]
    assert all(r["psi"] >= 0 and r["psi_sae_sd"] >= 0 for r in sae["per_round"])
    assert sae["per_round"][-1]["psi"] == pytest.approx(sae["metrics"]["psi"])  # the last round is the final model
    # round 0 is one model for every arm of a seed: measured once, kept beside it, the same for both arms
    twin = json.loads(run.job("al-random@2", 0).sae.read_text())
    assert twin["per_round"][0] == sae["per_round"][0]
    kept = json.loads(run.round0(0).round_psi.read_text())
    assert kept["protocol"]["psi"] == sae["per_round"][0]["psi"]
    # the SAEs saw 100 training images outside the 600-image pool, the same ones for both arms
    measured = sae["measurement_images"]
    assert measured["source"] == "outside_pool" and measured["images"] == len(measured["ids"]) == 100
    assert twin["measurement_images"] == measured and sae["train_vectors"] == 100 * 4  # 2 x 2 positions each
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sae_images"]["source"] == "outside_pool" and summary["sae_images"]["images"] == 100
    assert "100 training images outside the pool" in (tmp_path / "report.html").read_text()
    # and the kept number is what measuring the kept round-0 weights gives
    from superlens.data import load_spec
    from superlens.specs import stage_specs
    from superlens.study.measure import _superposition, measurement_images
    from superlens.study.stages import final_model
    from superlens.study.jobs import plan

    jobs, _ = plan(stage_specs(cfg), list(cfg["arms"]), run)
    job = next(j for j in jobs if getattr(j, "arm", None) == "al-random")
    splits = load_spec(job.data)
    train, _ = measurement_images(job, splits, torch.device("cpu"))
    assert not set(train.ids) & set(splits.train.ids) and not set(train.ids) & set(splits.test.ids)
    assert list(train.ids) == measured["ids"]
    again = _superposition(final_model(job, splits, weights=job.paths.round_model(0)), train, job.sae, job.recipe,
                           torch.device("cpu"))
    assert again["psi"] == pytest.approx(kept["protocol"]["psi"])
    final = _superposition(final_model(job, splits), train, job.sae, job.recipe, torch.device("cpu"))  # a fresh capture
    assert final["psi"] == pytest.approx(sae["metrics"]["psi"])  # the stage's reuse of its capture changed nothing
    assert "Superposition per active-learning round" in (tmp_path / "report.html").read_text()
    # the floor: psi of the seed's network at its initial weights on the same images, measured once for both arms
    from superlens.active.loop import derive_seed
    from superlens.models import build_model

    floor = sae["floor"]
    assert twin["floor"]["psi"] == floor["psi"] and run.round0(0).root.joinpath("floor.json").exists()
    init = build_model(job.model, splits.train.num_classes, derive_seed(0, "init"))
    assert _superposition(init, train, job.sae, job.recipe, torch.device("cpu"))["psi"] == pytest.approx(floor["psi"])
    assert floor["above"] == pytest.approx(sae["metrics"]["psi"] - floor["psi"])
    assert floor["clears"] == (floor["above"] > max(floor["psi_sd"], sae["superposition"]["psi_sd"]))
    assert sae["metrics"]["psi_init_floor"] == floor["psi"] and "psi_init_floor" in summary["arms"]["al-random"]
    assert "psi_init_floor" not in summary["arms"]["al-random@2"].get("vs_random", {})  # the seed's: not compared
    # a model at its floor is named in the report's first superposition paragraph
    for arm in ("al-random", "al-random@2"):
        path = run.job(arm, 0).sae
        kept_sae = json.loads(path.read_text())
        kept_sae["floor"]["clears"] = arm == "al-random"
        path.write_text(json.dumps(kept_sae))
    from superlens.study import summarize
    from superlens.report.html import build_report

    build_report(run, summarize(run))
    html = (tmp_path / "report.html").read_text()
    assert "at the level of an untrained network for\n1 of 2 models (al-random@2 seed 0)" in html
    assert html.index('id="instrument"') < html.index('id="primary"')  # said on the report's first line as well
    # the positive control: one job of the study (al-random, first seed) plants K = 0.5 N and N directions
    from superlens.analysis.controls import planted_response
    from superlens.analysis.sae import vector_labels
    from superlens.study.measure import _sae_vectors

    planted = sae["planted"]
    assert twin["planted"] is None and planted["model"] == "al-random/seed0"
    assert [r["planted"] for r in planted["response"]] == [16, 32]  # 32 channels at width 4
    _, vectors = _sae_vectors(final_model(job, splits), train, job.sae, job.recipe, torch.device("cpu"))
    again = planted_response(vectors, vector_labels(train.labels.numpy(), len(vectors)), [16, 32], plant_seed=0,
                             **asdict(job.sae.superposition))
    assert again["response"] == pytest.approx(planted["response"]) and again["psi"] == pytest.approx(final["psi"])
    assert summarize(run)["planted_response"]["response"] == pytest.approx(planted["response"])
    assert "Positive control (measured on al-random/seed0)" in html
    # the Gaussian floor of the same vectors: the protocol on gaussian_null of them, with the images' labels
    from superlens.analysis.controls import gaussian_null
    from superlens.analysis.superposition import measure_superposition

    null = measure_superposition(gaussian_null(vectors, seed=0), labels=vector_labels(train.labels.numpy(), len(vectors)),
                                 **asdict(job.sae.superposition))
    assert planted["gaussian_floor"]["psi"] == pytest.approx(null["psi"])
    assert "The Gaussian floor of the same vectors" in html


@pytest.mark.parametrize("extra, source, why", [
    ([], "pool", "the pool is the whole training split"),
    (["data.train_subset=1300"], "pool", "only 47 training images lie outside the pool"),
    (["data.train_subset=600", "sae.images=pool"], "pool", "asked for (sae.images=pool)"),
    (["data.train_subset=600"], "outside_pool", "747 training images lie outside the pool"),
])
def test_the_sae_images_come_from_outside_the_pool_when_there_are_enough(tmp_path, extra, source, why):
    from superlens.data import load_spec
    from superlens.specs import stage_specs
    from superlens.study.jobs import plan
    from superlens.study.measure import measurement_images

    cfg = tiny_config("arms=[al-random]", "seeds=[0]", "sae.enabled=true", "sae.max_images=100", *extra)
    jobs, _ = plan(stage_specs(cfg), list(cfg["arms"]), RunDir(tmp_path))
    job = next(j for j in jobs if getattr(j, "arm", None) == "al-random")
    splits = load_spec(job.data)
    images, record = measurement_images(job, splits, torch.device("cpu"))
    assert record["source"] == source and why in record["why"] and len(images) == record["images"] == 100
    pool = set(splits.train.ids)
    assert (set(images.ids) <= pool) == (source == "pool") and not set(images.ids) & (set() if source == "pool" else pool)
    assert not set(images.ids) & set(splits.test.ids)
    assert np.bincount(images.labels.numpy(), minlength=10).min() >= 9  # a stratified draw: about 10 per class
    assert measurement_images(job, splits, torch.device("cpu"))[1] == record  # fixed: every arm, seed and round


def test_run_dir_from_an_earlier_version_still_loads(tmp_path):
    import yaml

    cfg = tiny_config("arms=[baseline]", "seeds=[0]")
    run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    stored = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del stored["paper"], stored["sae"]["per_round"], stored["data"]["train_subset"]  # keys an earlier version lacked
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    assert RunDir(tmp_path).read_config() == cfg
    run_study(RunDir(tmp_path).read_config(), tmp_path, progress=False, log=lambda *_: None)


def test_checkpoints_hold_no_pickled_code_and_round_trip_strategy_state(tmp_path):
    import pickle

    import torch

    from superlens.active.loop import load_checkpoint, save_checkpoint

    state = {"fixed_embeddings": {"ids": np.arange(5), "values": np.ones((5, 3), np.float32)},
             "cluster_of": {7: 1, 9: 0}, "probcover_delta": [np.float64(0.55), 0.6], "coreset_radii": np.zeros(2)}
    payload = {"round": np.int64(2), "model": {"w": torch.ones(2)}, "pool": np.array([0, -1, 1]),
               "strategy_state": state, "records": [{"accuracy": np.float32(0.5), "labels": 10}]}
    save_checkpoint(tmp_path / "checkpoint.pt", payload)
    back = load_checkpoint(tmp_path / "checkpoint.pt")
    assert back["round"] == 2 and torch.equal(back["model"]["w"], torch.ones(2))
    assert np.array_equal(back["pool"], payload["pool"]) and back["pool"].dtype == payload["pool"].dtype
    assert np.array_equal(back["strategy_state"]["fixed_embeddings"]["values"], np.ones((5, 3), np.float32))
    assert back["strategy_state"]["cluster_of"] == {7: 1, 9: 0} and back["strategy_state"]["probcover_delta"] == [0.55, 0.6]
    assert back["records"] == [{"accuracy": 0.5, "labels": 10}]
    # a file that would run code when unpickled is refused, not executed
    torch.save({"round": 1, "hook": pickle.loads(pickle.dumps(Path))}, tmp_path / "checkpoint.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_an_a_a_replicate_shares_round_0_and_draws_its_own_queries_and_sets_the_dose_yardstick(tmp_path):
    cfg = tiny_config("arms=[al-least_confidence,al-random,al-random@2]", "seeds=[0]", "analysis.enabled=true",
                      "analysis.max_samples=100", "analysis.probe_samples=100", "analysis.tsne=false",
                      "sae.enabled=true", "sae.floor=false", "sae.stability=false", "sae.max_images=100",
                      "sae.settings.steps=5", "sae.settings.batch_size=64", "sae.superposition.max_steps=100",
                      "sae.superposition.window=50", "sae.superposition.batch_size=64")
    summary = run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    run = RunDir(tmp_path)
    a = json.loads(run.job("al-random", 0).done.read_text())["records"]
    b = json.loads(run.job("al-random@2", 0).done.read_text())["records"]
    assert strip_timing(a[:1]) == [{**strip_timing(b[:1])[0], "arm": "al-random"}]  # round 0 identical
    pa, pb = np.load(run.job("al-random", 0).pool), np.load(run.job("al-random@2", 0).pool)
    assert np.array_equal(pa == 0, pb == 0) and not np.array_equal(pa, pb)  # later queries differ
    assert "vs_random" in summary["arms"]["al-random@2"]
    # the dose: each arm's labelled set against al-random's, read from the seed's round-0 reference
    from superlens.analysis.dose import arm_dose
    from superlens.study.dose import load_reference

    reference = load_reference(run.round0(0).dose)
    latents = json.loads(run.job("al-random", 0).sae.read_text())["latents"]  # the decoding SAE's settings
    assert reference.fires.shape == (len(pa), latents) and len(reference.margin) == len(pa)
    assert "dose" not in summary["arms"]["al-random"]
    for arm, yardstick in (("al-least_confidence", "al-random@2"), ("al-random@2", None)):
        block = summary["arms"][arm]["dose"]
        assert block["reference_arm"] == yardstick and block["seeds"] == [0]
        by_hand = arm_dose(reference, np.load(run.job(arm, 0).pool), pa)
        assert [r["round"] for r in block["per_round"]] == [0, 1, 2] and block["per_round"][0]["class_js"] == 0
        for measure in ("class_js", "latent_js", "margin_shift", "typicality_shift"):
            assert block["final"][measure]["per_seed"] == [pytest.approx(by_hand[-1][measure])]
    lc = summary["arms"]["al-least_confidence"]["dose"]
    assert lc["changed_the_data"] is not None and lc["final"]["latent_js"]["mean"] > 0
    assert summary["arms"]["al-random@2"]["dose"]["changed_the_data"] is None
    assert "Dose: how far each arm" in (tmp_path / "report.html").read_text()
    with pytest.raises(UserError, match="integer k >= 2"):
        tiny_config("arms=[al-random@1]")
    with pytest.raises(UserError, match="unknown strategy 'nope' in arm 'al-nope@2'"):
        tiny_config("arms=[al-nope@2]")


def test_cka_comes_from_the_jobs_kept_features_and_a_driver_without_the_workers_gpu_needs_none(tmp_path):
    """The AL arms' analyses keep their test features (features.npz), so the driver's CKA needs no data
    and no device, and equals CKA of the two models' features captured afresh. For a run from before
    them (features missing) and Ray jobs told device=cuda with a driver without a GPU, the driver
    captures on its CPU instead of raising before the summary."""
    from dataclasses import replace

    from superlens.analysis.features import capture
    from superlens.analysis.similarity import linear_cka
    from superlens.data import fixed_subset, load_spec
    from superlens.specs import stage_specs
    from superlens.study.jobs import plan
    from superlens.study.run import StageClock, _similarities
    from superlens.study.stages import final_model

    cfg = tiny_config("seeds=[0]", "arms=[al-margin,al-random]", "analysis.enabled=true", "analysis.max_samples=100",
                      "analysis.probe_samples=100", "analysis.tsne=false")
    run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    specs = replace(stage_specs(cfg), device="cuda")
    jobs, _ = plan(specs, cfg["arms"], RunDir(tmp_path))
    margin, random_ = (next(j for j in jobs if getattr(j, "arm", None) == arm) for arm in ("al-margin", "al-random"))
    splits = load_spec(specs.data)
    test = fixed_subset(splits.test, 100)
    fresh = [capture(final_model(job, splits), test, "layer4", pool="avg", recipe=job.recipe)["layer4"]
             for job in (margin, random_)]
    kept = json.loads(margin.paths.similarity.read_text())
    assert kept["layers"]["layer4"] == pytest.approx(linear_cka(*fresh), abs=1e-6) and kept["images"] == 100
    assert not RunDir(tmp_path).job("baseline", 0).features.exists()
    for missing in (None, random_.paths.features):
        margin.paths.similarity.unlink()
        if missing is not None:
            missing.unlink()
        said = []
        _similarities(jobs, specs, None, None, StageClock(None), said.append)
        assert json.loads(margin.paths.similarity.read_text())["layers"] == pytest.approx(kept["layers"], abs=1e-6)
        driver_cpu = any("on the driver's CPU" in line for line in said)
        assert driver_cpu == (missing is not None and not torch.cuda.is_available())


def test_tsne_for_the_first_seed_only(tmp_path):
    from superlens.specs import stage_specs
    from superlens.study.jobs import plan

    cfg = tiny_config("arms=[al-random]", "seeds=[3,5]", "analysis.enabled=true", "analysis.tsne=first_seed")
    jobs, _ = plan(stage_specs(cfg), list(cfg["arms"]), RunDir(tmp_path))
    tsne = {j.seed: j.analysis.tsne for j in jobs if getattr(j, "arm", None) == "al-random"}
    assert tsne == {3: True, 5: False}
    with pytest.raises(UserError, match="analysis.headline_space=tsne compares t-SNE metrics over every seed"):
        load_config("demo", ["analysis.tsne=first_seed", "analysis.headline_space=tsne"])
    with pytest.raises(UserError, match="analysis.tsne"):
        load_config("demo", ["analysis.tsne=last_seed"])
