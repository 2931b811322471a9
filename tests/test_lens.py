"""`superlens analyze`: the lens on models superlens did not train."""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli

FACTORIES = Path(__file__).parent / "lens_models.py"
QUICK = ["analysis.max_samples=150", "analysis.probe_samples=200", "sae.max_images=60", "sae.settings.steps=20",
         "sae.settings.batch_size=128", "sae.superposition.max_steps=100", "sae.superposition.window=50",
         "featvis.settings.steps=4", "featvis.top=3", "sae.floor=false", "sae.gaussian_floor=false",
         "sae.planted=[]"]  # the floors and the planted control: tested on two layers below


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import lens_models

    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for name in ("small_cnn", "tiny_vit"):
        model = getattr(lens_models, name)(num_classes=10)
        with torch.no_grad():  # weights that differ from a fresh factory call, so loading them matters
            for p in model.parameters():
                p.mul_(1.5)
        paths[name] = folder / f"{name}.pt"
        torch.save(model.state_dict(), paths[name])
        paths[f"{name}_model"] = model
    return paths


def test_cnn_and_attention_model_two_layers_each(saved, tmp_path, capsys):
    out = tmp_path / "cnn"
    code, stdout, err = run_cli(["analyze", f"{FACTORIES}:small_cnn", "--weights", saved["small_cnn"], "--data", "digits",
                                 "--layers", "3,8", "--units", "0,5", "--out", out, *QUICK, "sae.floor=true",
                                 "sae.gaussian_floor=true", "sae.planted=[1.0]"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["arms"]["small_cnn"]
    assert set(entry["layers"]) == {"3", "8"} and 0 <= entry["test_accuracy"] <= 1
    for layer in ("3", "8"):
        m = entry["layers"][layer]
        for key in ("silhouette_features", "davies_bouldin_features", "nc1", "cosine_mean",
                    "silhouette_tsne", "psi", "sae_fvu", "sae_accuracy_spliced", "knn_accuracy"):
            assert key in m, (layer, key)
    for layer in ("3", "8"):  # the initialized-network floor of each layer, and where psi stands against it
        m = entry["layers"][layer]
        assert m["psi_above_floor"] == pytest.approx(m["psi"] - m["psi_init_floor"]) and m["psi_clears_floor"] in (0, 1)
        assert m["psi_gaussian_floor"] >= 0 and 0 <= m["planted_recall_1"] <= 1 and "planted_rise_1" in m
        assert "planted_rise_0.5" not in m  # only the ratios asked for
    assert "class_selectivity_mean" in entry["layers"]["8"]  # a ReLU output
    assert "class_selectivity_mean" not in entry["layers"]["3"]  # a convolution, before its ReLU
    assert "filter_cosine_mean" in entry["layers"]["3"] and "filter_cosine_mean" not in entry["layers"]["8"]
    # the metrics are the study's functions on the loaded weights, not on a fresh model
    from superlens.analysis import geometry
    from superlens.analysis.features import capture
    from superlens.data import fixed_subset
    from superlens.data import load

    test = fixed_subset(load("digits").test, 150)
    x = capture(saved["small_cnn_model"], test, "3", device="cpu")["3"]
    assert entry["layers"]["3"]["silhouette_features"] == pytest.approx(geometry.silhouette_score(x, test.labels.numpy()))
    html = (out / "report.html").read_text()
    for text in ("Layer 3", "Layer 8", "Sparse autoencoder", "t-SNE", "Activation maximization", "Neuron polysemanticity",
                 "planted_rise_1", "psi_gaussian_floor"):
        assert text in html, text
    assert "src=\"http" not in html

    out = tmp_path / "vit"
    code, stdout, err = run_cli(["analyze", f"{FACTORIES}:tiny_vit", "--weights", saved["tiny_vit"], "--data", "digits",
                                 "--layers", "block,mlp", "--out", out, *QUICK], capsys)
    assert code == 0, err
    entry = json.loads((out / "summary.json").read_text())["arms"]["tiny_vit"]
    assert "psi" in entry["layers"]["block"] and "class_selectivity_mean" not in entry["layers"]["block"]
    assert any("negative values" in n for n in entry["notes"])  # the block's output is not post-ReLU
    assert "class_selectivity_mean" in entry["layers"]["mlp"]  # the MLP's ReLU output is


def test_two_checkpoints_side_by_side_and_the_python_api(saved, tmp_path):
    import lens_models

    import superlens

    fresh = lens_models.small_cnn()
    summary = superlens.analyze([saved["small_cnn_model"], fresh], "digits", ["8"], labels=["trained", "fresh"],
                                out=tmp_path, options={"analysis": {"max_samples": 120, "probe_samples": 150, "tsne": False},
                                                       "sae": {"enabled": False}}, progress=lambda *_: None)
    assert list(summary["arms"]) == ["trained", "fresh"]
    assert summary["arms"]["trained"]["silhouette_features"] != summary["arms"]["fresh"]["silhouette_features"]
    html = (tmp_path / "report.html").read_text()
    assert "<th>trained</th><th>fresh</th>" in html


def test_list_layers(capsys):
    code, stdout, err = run_cli(["analyze", f"{FACTORIES}:tiny_vit", "--list-layers", "--data", "digits"], capsys)
    assert code == 0, err
    lines = {line.split()[0]: line.split()[-1] for line in stdout.splitlines()}
    assert lines["embed"] == "24x4x4" and lines["block"] == "16x24" and lines["head"] == "10"


def test_bad_inputs_are_one_line(saved, tmp_path, capsys):
    def fails(args, message):
        code, _, err = run_cli(["analyze", *args, "--out", tmp_path / "x", *QUICK], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err

    cnn = f"{FACTORIES}:small_cnn"
    fails([cnn, "--data", "digits", "--layers", "block.mlp"], "unknown layer 'block.mlp'")
    code, _, err = run_cli(["analyze", f"{FACTORIES}:tiny_vit", "--data", "digits", "--layers", "blok"], capsys)
    assert code == 2 and "close names: block" in err
    fails([f"{tmp_path}/missing.py:f", "--data", "digits"], "model factory file")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    fails([f"{broken}:f", "--data", "digits", "--layers", "x"], "cannot import the model factory")
    fails([f"{FACTORIES}:not_a_model", "--data", "digits", "--layers", "x"], "returned str, not a torch nn.Module")
    fails([cnn, "--weights", saved["tiny_vit"], "--data", "digits", "--layers", "3"], "missing")
    code, _, err = run_cli(["analyze", cnn, "--weights", saved["tiny_vit"], "--data", "digits", "--layers", "3"], capsys)
    assert "unexpected" in err and "--strict false" in err
    pickled = tmp_path / "whole.pt"
    torch.save(saved["small_cnn_model"], pickled)
    fails([cnn, "--weights", pickled, "--data", "digits", "--layers", "3"], "--trust-pickle")
    code, _, err = run_cli(["analyze", cnn, "--weights", pickled, "--trust-pickle", "--data", "digits", "--layers", "3",
                            "--out", tmp_path / "trusted", "sae.enabled=false", "analysis.tsne=false", *QUICK], capsys)
    assert code == 0, err
    fails([cnn, "--data", "digits", "--layers", "3", "analysis.bogus=1"], "unknown or invalid option 'analysis.bogus'")


def test_loose_weights_dead_layers_and_feature_outputs_become_notes(saved, tmp_path, capsys):
    code, stdout, err = run_cli(["analyze", f"{FACTORIES}:small_cnn", "--weights", saved["tiny_vit"], "--strict", "false",
                                 "--data", "digits", "--layers", "8", "--out", tmp_path / "a", "sae.enabled=false",
                                 "analysis.tsne=false", *QUICK], capsys)
    assert code == 0, err and "loaded the rest" in stdout
    code, _, err = run_cli(["analyze", f"{FACTORIES}:dead_layer", "--data", "digits", "--layers", "1,8", "--out",
                            tmp_path / "b", "sae.enabled=false", "analysis.tsne=false", *QUICK], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert any("every activation is zero" in n for n in summary["arms"]["dead_layer"]["notes"])
    assert "every activation is zero" in (tmp_path / "b" / "report.html").read_text()
    code, _, err = run_cli(["analyze", f"{FACTORIES}:features_only", "--data", "digits", "--layers", "1", "--out",
                            tmp_path / "c", "sae.enabled=false", "analysis.tsne=false", *QUICK], capsys)
    assert code == 0, err
    entry = json.loads((tmp_path / "c" / "summary.json").read_text())["arms"]["features_only"]
    assert "test_accuracy" not in entry and any("accuracy skipped" in n for n in entry["notes"])


def test_weights_listed_after_one_flag_and_study_checkpoint_labels(saved, tmp_path, capsys):
    study = tmp_path / "arms" / "baseline" / "seed0"
    study.mkdir(parents=True)
    (study / "model.pt").write_bytes(saved["small_cnn"].read_bytes())
    out = tmp_path / "two"
    code, stdout, err = run_cli(["analyze", f"{FACTORIES}:small_cnn", f"{FACTORIES}:small_cnn", "--weights", study / "model.pt",
                                 saved["small_cnn"], "--data", "digits", "--layers", "8", "--out", out,
                                 "sae.enabled=false", "analysis.tsne=false", *QUICK], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["arms"]) == ["baseline/seed0", "small_cnn"]
    assert summary["arms"]["baseline/seed0"]["silhouette_features"] == summary["arms"]["small_cnn"]["silhouette_features"]


def test_library_models_and_pretrained_weights_by_name(monkeypatch, tmp_path, capsys):
    """torchvision and timm are not installed here: a stand-in module records how superlens calls them."""
    import types

    import lens_models

    calls = []

    def get_model(name, **kwargs):
        calls.append((name, kwargs))
        return lens_models.small_cnn(num_classes=kwargs.get("num_classes", 1000))

    fake = types.ModuleType("torchvision.models")
    fake.get_model = get_model
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", fake)
    code, _, err = run_cli(["analyze", "torchvision:resnet50", "--weights", "pretrained:IMAGENET1K_V2", "--data", "digits",
                            "--layers", "8", "--out", tmp_path / "tv", "sae.enabled=false", "analysis.tsne=false", *QUICK], capsys)
    assert code == 0, err
    assert calls == [("resnet50", {"weights": "IMAGENET1K_V2"})]  # the pretrained head is kept: no num_classes
    entry = json.loads((tmp_path / "tv" / "summary.json").read_text())["arms"]["Sequential (pretrained:IMAGENET1K_V2)"]
    assert any("not (N, 10)" in n for n in entry["notes"]) and "silhouette_features" in entry
    code, _, err = run_cli(["analyze", "torchvision:resnet50", "--data", "digits", "--layers", "8", "--out", tmp_path / "tv2",
                            "sae.enabled=false", "analysis.tsne=false", *QUICK], capsys)
    assert code == 0 and calls[-1] == ("resnet50", {"num_classes": 10})
    monkeypatch.setitem(sys.modules, "timm", None)
    code, _, err = run_cli(["analyze", "timm:vit_tiny_patch16_224", "--data", "digits", "--layers", "x"], capsys)
    assert code == 2 and "pip install timm" in err


def test_list_layers_without_data_finds_the_input_size_or_says_which_flag(capsys):
    code, stdout, err = run_cli(["analyze", f"{FACTORIES}:flat_32px", "--list-layers"], capsys)
    assert code == 0, err
    assert "32x32 input" in stdout and stdout.splitlines()[-1].split()[-1] == "10"
    code, _, err = run_cli(["analyze", f"{FACTORIES}:flat_20px", "--list-layers"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--input-size" in err
    code, stdout, err = run_cli(["analyze", f"{FACTORIES}:flat_20px", "--list-layers", "--input-size", "20"], capsys)
    assert code == 0, err


def test_normalization_flags_are_checked(tmp_path, capsys):
    for flags, message in ((["--std", "0,0,0"], "--std must be positive"), (["--mean", "0.5,0.5"], "1 or 3"),
                           (["--input-size", "0"], "--input-size")):
        code, _, err = run_cli(["analyze", f"{FACTORIES}:small_cnn", "--data", "digits", *flags, "--out", tmp_path,
                                *QUICK], capsys)
        assert code == 2 and message in err, err


def test_a_raw_pixel_model_reaches_its_accuracy_with_pixels_raw(tmp_path, capsys):
    def analyse(out, *flags):
        code, stdout, err = run_cli(["analyze", f"{FACTORIES}:raw_pixel_digits", "--data", "digits", "--layers", "flat",
                                     *flags, "--out", out, *QUICK, "sae.enabled=false", "analysis.tsne=false"], capsys)
        assert code == 0, err
        summary = json.loads((out / "summary.json").read_text())
        return summary["arms"]["raw_pixel_digits"]["test_accuracy"], stdout, (out / "report.html").read_text()

    acc, stdout, report = analyse(tmp_path / "raw", "--pixels", "raw")
    assert acc > 0.8 and "near chance" not in stdout
    assert "0..255 pixels, mean 0, 0, 0, std 1, 1, 1 (--pixels raw)" in report
    acc, stdout, report = analyse(tmp_path / "wrong")  # the dataset's normalization: not what it was trained on
    assert acc < 0.15 and "near chance" in stdout and "near chance" in report
    assert "0..1 pixels normalized with the dataset&#39;s mean and std" in report


def test_a_stopped_analysis_continues_where_it_stopped(saved, tmp_path):
    """Each layer is written as it finishes; run again with the same out, only the unfinished layers are analysed,
    and a change of settings or weights analyses a kept layer again."""
    import lens_models

    import superlens

    options = {"analysis": {"max_samples": 120, "probe_samples": 150}, "sae": {"max_images": 40, "gaussian_floor": False,
               "planted": [], "settings": {"steps": 10, "batch_size": 64}, "superposition": {"max_steps": 60, "window": 30}}}
    lines: list[str] = []

    def stop_after_first_layer(line: str) -> None:
        lines.append(line)
        if line.startswith("small_cnn: 3: done in"):
            raise KeyboardInterrupt

    model = saved["small_cnn_model"]
    with pytest.raises(KeyboardInterrupt):
        superlens.analyze(model, "digits", ["3", "8"], labels=["small_cnn"], out=tmp_path, options=options,
                          progress=stop_after_first_layer)
    assert any("about" in line and "for the 1 left" in line for line in lines)  # the time the rest should take
    assert any("t-SNE of 120 points" in line for line in lines) and any("SAEs on" in line for line in lines)
    first = json.loads((tmp_path / "models" / "small_cnn" / "3" / "analysis.json").read_text())
    assert not (tmp_path / "models" / "small_cnn" / "8").exists() and not (tmp_path / "summary.json").exists()

    lines.clear()
    summary = superlens.analyze(model, "digits", ["3", "8"], labels=["small_cnn"], out=tmp_path, options=options,
                                progress=lines.append)
    assert any(line.startswith("small_cnn: 3: kept from an earlier run") for line in lines)
    assert "small_cnn: 8" in lines and "small_cnn: 3" not in lines
    layers = summary["arms"]["small_cnn"]["layers"]
    assert layers["3"]["silhouette_features"] == first["metrics"]["silhouette_features"]
    assert layers["8"]["psi"] is not None
    html = (tmp_path / "report.html").read_text()
    assert "Layer 3" in html and "Layer 8" in html and "t-SNE" in html

    # the kept layer matches what a fresh, uninterrupted run computes
    fresh = superlens.analyze(model, "digits", ["3"], labels=["small_cnn"], options=options, progress=None)
    assert fresh["arms"]["small_cnn"]["silhouette_features"] == pytest.approx(layers["3"]["silhouette_features"])

    lines.clear()  # other settings: nothing kept
    superlens.analyze(model, "digits", ["3"], labels=["small_cnn"], out=tmp_path, options={**options, "seed": 1},
                      progress=lines.append)
    assert "small_cnn: 3" in lines and not any("kept" in line for line in lines)
    lines.clear()  # other weights under the same label: nothing kept
    superlens.analyze(lens_models.small_cnn(), "digits", ["3"], labels=["small_cnn"], out=tmp_path,
                      options={**options, "seed": 1}, progress=lines.append)
    assert "small_cnn: 3" in lines and not any("kept" in line for line in lines)
