import json

import pytest
import torch

from conftest import run_cli
from superlens.config import QUIRKS, load_config, preset_names
from superlens.specs import ActiveSpec
from superlens.training import make_recipe

PAPER_UNITS = [8, 25, 54, 89, 131, 200, 221, 276, 340, 455, 500]


def leaves(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def test_preset_list():
    assert {"demo", "devkar2024-cifar10", "devkar2024-tinyimagenet", "cifar10", "cifar10-pretrained",
            "tinyimagenet"} <= set(preset_names())


def test_devkar2024_cifar10_replays_the_notebook():
    cfg = load_config("devkar2024-cifar10")
    assert cfg["seeds"] == [0] and cfg["arms"] == ["baseline", "al-least_confidence"]
    assert cfg["model"] == {"stem": "imagenet", "width": 64, "dropout": 0.0, "pretrained": "IMAGENET1K_V1"}
    r = make_recipe(cfg["recipe"])
    assert (r.optimizer, r.lr, r.batch_size, r.epochs, r.amp) == ("adam", 1e-3, 128, 20, True)
    assert (r.crop_padding, r.flip, r.weight_decay, r.label_smoothing, r.input_size) == (0, False, 0.0, 0.0, None)
    al = cfg["active"]
    assert (al["initial_size"], al["initial"], al["reset"], al["start_from_baseline"]) == (5000, "random", "warm", True)
    assert ActiveSpec.from_section(al).query_sizes(50_000) == [5000] * 9  # 10 training loops, the last on all 50,000 images
    assert cfg["data"]["mean"] == [0.4914, 0.4822, 0.4465] and cfg["data"]["std"] == [0.2023, 0.1994, 0.2010]
    a = cfg["analysis"]
    assert (a["layer"], a["pool"], a["max_samples"], a["tsne"], a["headline_space"]) == ("layer4", "flatten", 10000, True, "tsne")
    assert a["repeat_block"] == "layer4.1"
    assert cfg["featvis"]["layer"] == "layer4.1.conv2" and cfg["featvis"]["units"] == PAPER_UNITS
    assert cfg["featvis"]["settings"] == {"decorrelate": False, "normalize_input": False, "upsample_to": 224}
    numbers = cfg["paper"]["numbers"]
    assert numbers["baseline"] == {"cosine_mean": 0.885, "silhouette": 0.212, "davies_bouldin": 1.551}
    assert numbers["al-least_confidence"] == {"cosine_mean": 0.927, "silhouette": 0.189, "davies_bouldin": 1.542}


def test_devkar2024_tinyimagenet_replays_the_notebook():
    cfg = load_config("devkar2024-tinyimagenet")
    r = make_recipe(cfg["recipe"])
    assert r.input_size == 224 and r.optimizer == "adam" and r.epochs == 20
    assert cfg["data"]["mean"] is None  # the dataset's own ImageNet statistics
    assert ActiveSpec.from_section(cfg["active"]).query_sizes(100_000) == [10_000] * 9
    numbers = cfg["paper"]["numbers"]
    assert numbers["baseline"] == {"cosine_mean": 0.310, "silhouette": -0.348}
    assert numbers["al-least_confidence"] == {"cosine_mean": 0.254, "silhouette": -0.399}


@pytest.mark.parametrize("name", ["cifar10", "tinyimagenet", "cifar10-pretrained"])
def test_corrected_presets(name):
    cfg = load_config(name)
    assert cfg["arms"] == ["baseline", "al-random", "al-random@2", "al-least_confidence", "al-margin", "al-entropy",
                           "al-badge", "al-latent_coverage", "al-interference"]  # with the A/A control and the lens arms
    assert len(cfg["seeds"]) == 10 and not any(cfg["quirks"].values())
    assert cfg["sae"]["per_round"] and cfg["stats"]["primary"] == "psi"  # psi at equal accuracy: the primary endpoint
    assert make_recipe(cfg["recipe"]).optimizer == "sgd"
    assert cfg["analysis"]["tsne"] and cfg["analysis"]["headline_space"] == "features"
    assert cfg["sae"]["enabled"] and cfg["featvis"]["enabled"]
    assert cfg["model"]["stem"] == ("imagenet" if name.endswith("pretrained") else "cifar")


@pytest.mark.parametrize("quirk", list(QUIRKS))
def test_each_quirk_changes_exactly_what_it_names(quirk):
    on = leaves(load_config("devkar2024-cifar10", [f"quirks.{quirk}=true"]))
    off = leaves(load_config("devkar2024-cifar10", [f"quirks.{quirk}=false"]))
    changed = {k for k in set(on) | set(off) if on.get(k) != off.get(k)} - {f"quirks.{quirk}"}
    assert changed == set(QUIRKS[quirk]), quirk


def test_unknown_quirk_is_a_clear_error(capsys):
    code, _, err = run_cli(["run", "devkar2024-cifar10", "quirks.fast_mode=true"], capsys)
    assert code == 2 and "quirks.fast_mode" in err


SMALL = ["data.name=digits", "model.pretrained=null", "model.width=4", "recipe.epochs=1",
         "active.initial_size=100", "active.query_size=200", "active.rounds=1", "analysis.max_samples=200",
         "analysis.probe_samples=300", "sae.enabled=false", "featvis.enabled=false", "toy.enabled=false",
         "quirks.notebook_cifar_std=false"]


def adam_steps(run_dir, arm):
    state = torch.load(run_dir / "arms" / arm / "seed0" / "optimizer.pt", weights_only=True)["state"]
    return int(next(iter(state.values()))["step"])


@pytest.mark.parametrize("warm", [True, False])
def test_warm_start_from_baseline_continues_its_adam_state(tmp_path, capsys, warm):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["run", "devkar2024-cifar10", *SMALL, "analysis.enabled=false",
                                 f"quirks.warm_start_from_baseline={str(warm).lower()}", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    baseline_steps = -(-1347 // 128)  # one epoch on the 1,347 digits
    al_steps = -(-100 // 128) + -(-300 // 128)  # round 0 on 100 images, round 1 on 300
    assert adam_steps(out, "baseline") == baseline_steps
    assert adam_steps(out, "al-least_confidence") == al_steps + (baseline_steps if warm else 0)


def test_paper_table_in_summary_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["run", "devkar2024-cifar10", *SMALL, "--out", out, "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    comparison = summary["paper_comparison"]
    assert "warm_start_from_baseline" in comparison["quirks_on"] and "notebook_cifar_std" not in comparison["quirks_on"]
    rows = {(r["arm"], r["metric"]): r for r in comparison["rows"]}
    assert rows[("baseline", "cosine_mean")]["paper"] == 0.885
    assert rows[("baseline", "silhouette")]["ours"] == summary["arms"]["baseline"]["silhouette_tsne"]  # metrics_on_tsne
    html = (out / "report.html").read_text()
    assert "Paper vs this run" in html and "0.885" in html
    assert "paper vs this run" in stdout
