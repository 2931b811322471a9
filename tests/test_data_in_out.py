"""Data in and out: Hugging Face parquet snapshots, stable image ids, and the queried images exported."""

import csv
import io
import json

import numpy as np
import pytest

from conftest import run_cli
from superlens.data import load
from superlens.errors import UserError

CLASSES = ["airplane", "automobile", "bird"]


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_hub_parquet(path, images, labels, image_column="img", label_column="label", names=CLASSES):
    """One parquet shard as the Hub stores an image classification split: a struct image column
    (bytes, path), an int64 ClassLabel column, the features in the file's `huggingface` metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({image_column: pa.array([{"bytes": _png(x), "path": None} for x in images], type=image_type),
                      label_column: pa.array(labels, type=pa.int64())})
    features = {image_column: {"_type": "Image"}, label_column: {"names": names, "_type": "ClassLabel"}}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def hub_snapshot(root, splits=("train", "test"), folder="plain_text", **kw):
    rng = np.random.default_rng(0)
    made = {}
    for split, n in zip(splits, (9, 4)):
        images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        labels = np.arange(n) % 3
        write_hub_parquet(root / folder / f"{split}-00000-of-00001.parquet", images, labels, **kw)
        made[split] = (images, labels)
    return made


def test_a_hub_parquet_snapshot_loads_offline(tmp_path):
    made = hub_snapshot(tmp_path / "cifar")
    train, test = load("hf:uoft-cs/cifar10", root=tmp_path / "cifar")
    assert train.classes == CLASSES and len(train) == 9 and len(test) == 4
    assert np.array_equal(train.images.permute(0, 2, 3, 1).numpy(), made["train"][0])  # PNG round trip is exact
    assert train.labels.tolist() == made["train"][1].tolist() and test.labels.tolist() == made["test"][1].tolist()
    assert train.ids.tolist()[:3] == ["train/0", "train/1", "train/2"] and test.ids[-1] == "test/3"
    assert train.name == "hf:uoft-cs/cifar10" and test.mean == train.mean
    # a `valid` split (zh-plus/tiny-imagenet's layout) is the test split; other column names are found by feature type
    hub_snapshot(tmp_path / "tiny", splits=("train", "valid"), folder="data", image_column="image",
                 label_column="fine")
    train, test = load("hf:zh-plus/tiny-imagenet", root=tmp_path / "tiny", image_size=16)
    assert len(test) == 4 and test.images.shape[2:] == (16, 16) and test.ids[0] == "valid/0"


def test_hub_snapshot_mistakes_are_one_line(tmp_path, capsys):
    hub_snapshot(tmp_path / "snap", splits=("train", "valid"))
    with pytest.raises(UserError, match="no 'holdout' split .*its splits: train, valid"):
        load("hf:x/y", root=tmp_path / "snap", test_split="holdout")
    with pytest.raises(UserError, match="no column 'fine_label' .*its columns: img, label"):
        load("hf:x/y", root=tmp_path / "snap", label_column="fine_label")
    with pytest.raises(UserError, match="set data.root"):
        load("hf:x/y")
    code, _, err = run_cli(["data", "check", "hf:x/y", "--root", tmp_path / "nothing"], capsys)
    assert code == 2 and err.count("\n") == 1 and "is missing" in err


def test_ids_survive_subsets_and_file_datasets_name_their_files(tmp_path):
    from PIL import Image

    from superlens.data import fixed_subset

    train = load("digits").train
    sub = fixed_subset(train, 50)
    assert len(set(sub.ids.tolist())) == 50 and all(i.startswith("train/") for i in sub.ids)
    index = [int(i.split("/")[1]) for i in sub.ids]
    assert np.array_equal(train.images[index].numpy(), sub.images.numpy())  # the id is the image
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    folder, _ = load(f"imagefolder:{tmp_path}")
    assert folder.ids.tolist() == [f"train/{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]


@pytest.fixture(scope="session")  # one set-up per worker, whatever the order of its tests
def queried_run(tmp_path_factory):
    """A tiny study on an image folder: margin sampling (scores) and random (none)."""
    from PIL import Image

    from superlens.config import load_config
    from superlens.study import run_study

    data = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 10)):
        for c, cls in enumerate(("a", "b", "c")):
            (data / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 80, (8, 8, 3), dtype=np.uint8) + 60 * c).save(
                    data / split / cls / f"{i:03d}.png")
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("demo", ["workers=1", f"data.name=imagefolder:{data}",
                               "data.options.image_size=8", "seeds=[0]", "model.width=4",
                               "recipe.epochs=1", "recipe.batch_size=32", "active.initial_size=12",
                               "active.query_size=10", "active.rounds=2", "arms=[al-margin,al-random]",
                               "analysis.enabled=false", "featvis.enabled=false", "sae.enabled=false",
                               "toy.enabled=false"])
    run_study(cfg, out, progress=False, log=lambda *_: None)
    return out, data


@pytest.mark.xdist_group("test_data_in_out-queried_run")  # its module fixture: built once, on one worker
def test_queries_as_csv_match_the_pool(queried_run, capsys):
    from superlens.rundir import RunDir

    out, data = queried_run
    code, text, err = run_cli(["queries", out, "--arm", "al-margin", "--seed", "0"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(text)))
    pool = np.load(RunDir(out).job("al-margin", 0).pool)
    assert len(rows) == (pool >= 0).sum() == 32
    classes = ["a", "b", "c"]
    for row in rows:
        assert pool[int(row["index"])] == int(row["round"])
        assert row["id"].startswith("train/") and (data / row["id"]).exists()  # the file it was
        assert row["id"].split("/")[1] == row["label"]  # the true label is its folder
    later = [r for r in rows if r["round"] != "0"]
    assert [int(r["rank"]) for r in later if r["round"] == "1"] == list(range(10))
    assert all(r["predicted"] in classes and 0 < float(r["confidence"]) <= 1 for r in later)
    margins = [float(r["score"]) for r in later if r["round"] == "1"]
    assert margins == sorted(margins, reverse=True)  # ranked by the score: smallest margin first
    assert all(r["predicted"] == "" and r["score"] == "" for r in rows if r["round"] == "0")
    code, text, _ = run_cli(["queries", out, "--arm", "al-random", "--seed", "0", "--round", "2"], capsys)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and len(rows) == 10 and all(r["score"] == "" and r["round"] == "2" for r in rows)


@pytest.mark.xdist_group("test_data_in_out-queried_run")  # its module fixture: built once, on one worker
def test_queries_for_label_studio(queried_run, tmp_path, capsys):
    out, data = queried_run
    target = tmp_path / "tasks.json"
    code, _, err = run_cli(["queries", out, "--arm", "al-margin", "--seed", "0", "--round", "1",
                            "--format", "labelstudio", "--out", target], capsys)
    assert code == 0, err
    tasks = json.loads(target.read_text())
    assert len(tasks) == 10
    for task in tasks:
        assert task["data"]["image"].startswith("data:image/png;base64,") and task["data"]["round"] == 1
        (prediction,) = task["predictions"]
        (choice,) = prediction["result"][0]["value"]["choices"]
        assert choice in ("a", "b", "c") and 0 < prediction["score"] <= 1
    from PIL import Image
    import base64

    first = tasks[0]["data"]
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(first["image"].split(",", 1)[1]))))
    assert np.array_equal(decoded, np.asarray(Image.open(data / first["superlens_id"]).convert("RGB")))
    code, _, _ = run_cli(["queries", out, "--arm", "al-margin", "--seed", "0", "--format", "labelstudio",
                          "--image-root", "/data/local-files/?d=folder", "--out", target], capsys)
    assert code == 0 and json.loads(target.read_text())[0]["data"]["image"].startswith("/data/local-files/?d=folder/train/")


@pytest.mark.xdist_group("test_data_in_out-queried_run")  # its module fixture: built once, on one worker
def test_queries_mistakes_are_one_line(queried_run, capsys):
    out, _ = queried_run
    for args, message in ((["--arm", "al-badge", "--seed", "0"], "unknown arm 'al-badge'; the active-learning arms"),
                          (["--arm", "al-margin", "--seed", "7"], "unknown seed 7"),
                          (["--arm", "al-margin", "--seed", "0", "--round", "9"], "has no round 9; its rounds: 0, 1, 2")):
        code, _, err = run_cli(["queries", out, *args], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_a_long_tailed_pool_and_the_metrics_that_go_with_it(tmp_path):
    from sklearn.metrics import balanced_accuracy_score

    from superlens.analysis.calibration import balanced_accuracy, expected_calibration_error
    from superlens.config import load_config
    from superlens.data import load_spec
    from superlens.data.dataset import long_tail_counts
    from superlens.specs import DataSpec
    from superlens.study import run_study

    # the profile: exponential from the smallest class's count down to count / ratio
    assert long_tail_counts(np.array([100, 120, 100]), 10).tolist() == [100, 31, 10]
    spec = DataSpec(name="digits", imbalance=10.0)
    train, test = load_spec(spec)
    full_train, full_test = load("digits")
    counts = np.bincount(train.labels.numpy(), minlength=10)
    assert counts.tolist() == long_tail_counts(np.bincount(full_train.labels.numpy()), 10).tolist()
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.1) and train.meta["class_profile"] == counts.tolist()
    assert np.array_equal(test.labels.numpy(), full_test.labels.numpy())  # the test set stays as it was: balanced
    again, _ = load_spec(spec)
    assert again.ids.tolist() == train.ids.tolist()  # the same pool every time: every arm and seed trains on it
    with pytest.raises(UserError, match="data.imbalance must be null or a number >= 1"):
        load_config("demo", ["data.imbalance=0.5"])

    # ECE by hand: two bins used; balanced accuracy against scikit-learn
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    # confidences 0.9, 0.8 (bins 13, 11: accuracy 1 and 0), 0.6, 0.7 (bins 8, 10: both right)
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.6) + abs(1 - 0.7)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), 300)
    y = rng.integers(0, 4, 300)
    assert balanced_accuracy(p, y) == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))

    cfg = load_config("demo", ["workers=1", "data.imbalance=10", "seeds=[0]", "model.width=4", "recipe.epochs=1",
                               "recipe.batch_size=64", "active.initial_size=40", "active.query_size=40",
                               "active.rounds=2", "arms=[al-least_confidence,al-random]", "analysis.enabled=false",
                               "featvis.enabled=false", "toy.enabled=false", "sae.max_images=200",
                               "sae.stability=false", "sae.settings.steps=5", "sae.settings.batch_size=64",
                               "sae.superposition.max_steps=250", "sae.superposition.window=125",
                               "sae.superposition.batch_size=64"])
    summary = run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    for key in ("psi_tail", "psi_head"):  # superposition at both ends of the profile, compared with al-random
        assert summary["arms"]["al-random"][key] >= 0 and key in summary["arms"]["al-least_confidence"]["vs_random"]
    import csv as csv_

    rows = list(csv_.DictReader(open(tmp_path / "rounds.csv")))
    later = [r for r in rows if r["round"] != "0"]
    assert all(0 <= float(r["query_minority_share"]) <= 1 for r in later)
    assert all(0 <= float(r["test_ece"]) <= 1 and 0 <= float(r["test_balanced_accuracy"]) <= 1 for r in rows)
    tail = np.bincount(train.labels.numpy()) < np.median(np.bincount(train.labels.numpy()))
    queried = np.load(tmp_path / "arms" / "al-random" / "seed0" / "queries.npz")
    first = queried["round"] == 1
    assert float(next(r for r in later if r["arm"] == "al-random" and r["round"] == "1")["query_minority_share"]) == \
        pytest.approx(tail[queried["label"][first]].mean())
    assert "query_minority_share" in summary["arms"]["al-least_confidence"]["vs_random"]
    # the labelled set's minority share and the accuracy at both ends of the profile, every round
    test = load("digits").test
    for r in rows:
        pool = np.load(tmp_path / ("round0" if r["round"] == "0" else f"arms/{r['arm']}") / "seed0" / "pool.npy")
        labelled = train.labels.numpy()[(pool >= 0) & (pool <= int(r["round"]))]
        assert float(r["labeled_minority_share"]) == pytest.approx(tail[labelled].mean())
        assert 0 <= float(r["test_tail_accuracy"]) <= 1 and 0 <= float(r["test_head_accuracy"]) <= 1
    from superlens.analysis.calibration import class_group_accuracy

    group = np.zeros(4, bool)
    group[[1, 3]] = True
    p = np.eye(4)[[0, 1, 1, 3, 2, 3]]
    y = np.array([0, 1, 3, 3, 2, 1])  # class 1: 1 of 2 right, class 3: 1 of 2 right
    assert class_group_accuracy(p, y, group) == pytest.approx(0.5) and class_group_accuracy(p, y, ~group) == 1.0
    assert len(test) == 450
    html = (tmp_path / "report.html").read_text()
    assert "The long-tailed pool" in html and "test_tail_accuracy" in summary["arms"]["al-random"]


def _tracked_study_with_a_stop(kind, tmp_path, monkeypatch):
    """A one-arm study with ``tracking=kind`` stopped right after round 1 was tracked, then resumed."""
    import superlens.tracking as tracking
    from superlens.config import load_config
    from superlens.study import run_study

    cfg = load_config("demo", ["workers=1", f"tracking={kind}", "seeds=[0]", "model.width=4", "recipe.epochs=1",
                               "recipe.batch_size=64", "active.initial_size=40", "active.query_size=40",
                               "active.rounds=2", "arms=[al-margin]", "analysis.enabled=false", "featvis.enabled=false",
                               "toy.enabled=false", "sae.max_images=40", "sae.stability=false", "sae.settings.steps=5",
                               "sae.settings.batch_size=64", "sae.per_round=true", "sae.superposition.max_steps=500",
                               "sae.superposition.window=250", "sae.superposition.batch_size=64"])
    original = tracking.Tracking.rounds

    def stop_after_round_1(self, records):
        original(self, records)
        if max(r["round"] for r in records) == 1:
            raise KeyboardInterrupt  # the process stops right after round 1 was tracked

    monkeypatch.setattr(tracking.Tracking, "rounds", stop_after_round_1)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    monkeypatch.setattr(tracking.Tracking, "rounds", original)
    run_study(cfg, tmp_path, progress=False, log=lambda *_: None)  # resumed: round 2, then the SAE stage


def test_tensorboard_tracking_mirrors_each_round_once_across_a_stop(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _tracked_study_with_a_stop("tensorboard", tmp_path, monkeypatch)
    events = EventAccumulator(str(tmp_path / "tensorboard" / "al-margin" / "seed0"))
    events.Reload()
    rows = list(csv.DictReader(open(tmp_path / "rounds.csv")))
    for column in ("test_accuracy", "test_ece", "optimizer_steps"):
        written = [(e.step, e.value) for e in events.Scalars(f"rounds/{column}")]
        assert [s for s, _ in written] == [int(r["n_labeled"]) for r in rows] == [40, 80, 120]  # each round once
        assert [v for _, v in written] == pytest.approx([float(r[column]) for r in rows], rel=1e-6)
    psi = [(e.step, e.value) for e in events.Scalars("sae/psi_per_round")]
    sae = json.loads((tmp_path / "arms" / "al-margin" / "seed0" / "sae.json").read_text())
    assert psi == [(r["n_labeled"], pytest.approx(r["psi"], abs=1e-6)) for r in sae["per_round"]]
    assert len(events.Scalars("sae/superposition_SAEs")) >= 2  # the protocol's loss curve, every 250 steps
    (config,) = events.Tensors("config/text_summary")  # the resolved config, attached once
    assert "arms:\n- al-margin" in config.tensor_proto.string_val[0].decode()


class _RecordingWandB:
    """Stands in for the wandb package: keeps every init, logged row, metric definition and config update."""

    def __init__(self):
        self.inits, self.rows, self.steps, self.config, self.finished = [], [], {}, {}, 0
        self.Settings = dict

    def init(self, **kwargs):
        import types

        self.inits.append(kwargs)
        owner = self

        def define_metric(name, step_metric=None, hidden=False):
            if step_metric:
                owner.steps[name] = step_metric

        def finish(quiet=False):
            owner.finished += 1

        config = types.SimpleNamespace(update=lambda d, allow_val_change=False: owner.config.update(d))
        return types.SimpleNamespace(define_metric=define_metric, log=self.rows.append, finish=finish, config=config)


def test_wandb_tracking_mirrors_each_round_once_across_a_stop(tmp_path, monkeypatch):
    import sys

    fake = _RecordingWandB()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _tracked_study_with_a_stop("wandb", tmp_path, monkeypatch)
    rows = list(csv.DictReader(open(tmp_path / "rounds.csv")))
    for column in ("test_accuracy", "test_ece"):
        written = [(r["n_labeled"], r[f"rounds/{column}"]) for r in fake.rows if f"rounds/{column}" in r]
        assert [s for s, _ in written] == [int(r["n_labeled"]) for r in rows] == [40, 80, 120]  # each round once
        assert [v for _, v in written] == pytest.approx([float(r[column]) for r in rows], rel=1e-6)
        assert fake.steps[f"rounds/{column}"] == "n_labeled"
    sae = json.loads((tmp_path / "arms" / "al-margin" / "seed0" / "sae.json").read_text())
    psi = [(r["n_labeled"], r["sae/psi_per_round"]) for r in fake.rows if "sae/psi_per_round" in r]
    assert psi == [(r["n_labeled"], pytest.approx(r["psi"])) for r in sae["per_round"]]
    curve = [r for r in fake.rows if "sae/superposition_SAEs" in r]
    assert len(curve) >= 2 and fake.steps["sae/superposition_SAEs"] == "sae_step" and "sae_step" in curve[0]
    # one run per job and process (before the stop, after it), closed each time; the resumed one continues it
    kept = json.loads((tmp_path / "arms" / "al-margin" / "seed0" / "tracked.json").read_text())
    assert {i["id"] for i in fake.inits} == {kept["wandb_id"]} and len(fake.inits) == fake.finished == 2
    first = fake.inits[0]
    assert first["mode"] == "offline" and first["resume"] == "allow" and first["group"] == tmp_path.name
    assert first["name"] == "al-margin-seed0" and first["tags"] == ["al-margin", "seed0"]
    assert first["dir"] == str(tmp_path)
    assert fake.config["arms"] == ["al-margin"] and fake.config["tracking"] == "wandb"  # the resolved config, once


def test_a_real_wandb_run_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from superlens.tracking import Tracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "config.yaml").write_text("arms: [al-margin]\n")
    ledger = tmp_path / "arms" / "al-margin" / "seed0" / "tracked.json"
    ledger.parent.mkdir(parents=True)
    tracking = Tracking("wandb", tmp_path, tmp_path / "config.yaml", ledger, "study", "al-margin", 0)
    records = [{"arm": "al-margin", "seed": 0, "round": 0, "n_labeled": 40, "test_accuracy": 0.5}]
    tracking.rounds(records)
    tracking.rounds(records + [{"arm": "al-margin", "seed": 0, "round": 1, "n_labeled": 80, "test_accuracy": 0.6}])
    tracking.sae({"superposition_SAEs": [(250, 1.0), (500, 0.5)]}, [{"round": 1, "n_labeled": 80, "psi": 0.1}])
    tracking.finish()
    kept = json.loads(ledger.read_text())
    assert kept["rounds"] == [0, 1] and kept["sae"] and kept["config"]
    (run,) = (tmp_path / "wandb").glob(f"offline-run-*-{kept['wandb_id']}")  # one run, kept offline on disk
    assert list(run.glob("*.wandb"))


def test_tracking_mistakes_are_one_line(tmp_path, capsys, monkeypatch):
    import importlib

    code, _, err = run_cli(["run", "demo", "tracking=mlflow", "--out", tmp_path / "a", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "tracking must be 'none', 'tensorboard' or 'wandb'" in err
    real = importlib.import_module

    def missing(name, *args):
        if name in ("torch.utils.tensorboard", "wandb"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    for kind in ("tensorboard", "wandb"):
        code, _, err = run_cli(["run", "demo", f"tracking={kind}", "--out", tmp_path / kind, "--quiet"], capsys)
        assert code == 2 and err.count("\n") == 1 and f"pip install 'superlens[{kind}]'" in err
        assert not (tmp_path / kind / "round0").exists()


def test_ids_of_a_parquet_dataset_reach_the_queries(tmp_path, capsys):
    from superlens.config import load_config
    from superlens.study import run_study

    rng = np.random.default_rng(1)
    for split, n in (("train", 60), ("test", 12)):
        labels = np.arange(n) % 3
        images = (rng.integers(0, 60, (n, 8, 8, 3)) + 80 * labels[:, None, None, None]).astype(np.uint8)
        write_hub_parquet(tmp_path / "snap" / "plain_text" / f"{split}-00000-of-00001.parquet", images, labels)
    cfg = load_config("demo", ["workers=1", "data.name=hf:uoft-cs/cifar10",
                               f"data.root={tmp_path / 'snap'}", "data.options={}",
                               "seeds=[0]", "model.width=4", "recipe.epochs=1", "recipe.batch_size=32",
                               "active.initial_size=12", "active.query_size=10", "active.rounds=1",
                               "arms=[al-margin]", "analysis.enabled=false", "featvis.enabled=false",
                               "sae.enabled=false", "toy.enabled=false"])
    run_study(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    code, text, err = run_cli(["queries", tmp_path / "run", "--arm", "al-margin", "--seed", "0"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 22
    for row in rows:  # the id is the parquet row: its label there is the label exported
        split, index = row["id"].split("/")
        assert split == "train" and CLASSES[int(index) % 3] == row["label"]
