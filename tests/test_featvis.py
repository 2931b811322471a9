from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from superlens.analysis.featvis import FeatVisSettings, color_sqrt, exemplars, visualize
from superlens.data import load
from superlens.errors import UserError
from superlens.models import resnet18


def planted_model() -> nn.Module:
    """Channels 0-2 detect red, green, blue; channel 3 detects vertical edges (Sobel-x on grey)."""
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(3):
            conv.weight[c, :, 1, 1] = -0.5
            conv.weight[c, c, 1, 1] = 1.0
        sobel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
        conv.weight[3] = sobel / 3
    return nn.Sequential(OrderedDict(detect=conv, relu=nn.ReLU()))


@pytest.fixture(scope="module")
def data():
    return load("synthetic", n_train=300, n_test=10, image_size=32).train


@pytest.fixture(scope="module")
def planted_result(data):
    # the conv channels themselves: a ReLU after a channel that starts below zero passes no gradient
    return visualize(planted_model(), "detect", [0, 1, 2, 3], data, FeatVisSettings(steps=200, seed=0))


def test_planted_colour_units_get_their_colour(planted_result):
    images = planted_result.images[:, 0]  # (units, 3, H, W)
    for unit in range(3):
        assert images[unit].mean(axis=(1, 2)).argmax() == unit


def test_planted_orientation_unit_gets_vertical_edges(planted_result):
    grey = planted_result.images[3, 0].mean(0)
    horizontal_change = np.abs(np.diff(grey, axis=1)).mean()  # across columns: vertical edges
    vertical_change = np.abs(np.diff(grey, axis=0)).mean()
    assert horizontal_change > 2 * vertical_change


def test_optimized_images_beat_the_best_dataset_exemplar(planted_result, data):
    ex = exemplars(planted_model(), "detect", [0, 1, 2, 3], data, top=9)
    assert ex.indices.shape == (4, 9) and (np.diff(ex.activation, axis=1) <= 0).all()
    assert (planted_result.activation[:, 0] >= ex.activation[:, 0]).all()


def test_visualize_is_deterministic_and_diverse(data):
    model = planted_model()
    settings = FeatVisSettings(steps=20, seed=3, images_per_unit=2, diversity=1.0)
    a = visualize(model, "relu", [0, 3], data, settings)
    b = visualize(model, "relu", [0, 3], data, settings)
    assert a.images.shape == (2, 2, 3, 32, 32)
    assert np.array_equal(a.images, b.images)
    assert not np.allclose(a.images[0, 0], a.images[0, 1])


def test_paper_settings_upsample_and_skip_normalization(data):
    torch.manual_seed(0)
    model = resnet18(10, width=4)  # ImageNet stem, as the study's model
    s = FeatVisSettings(steps=3, upsample_to=64, normalize_input=False, decorrelate=False, fourier=False)
    r = visualize(model, "layer4.1.conv2", [1, 5], data, s)
    assert r.images.shape == (2, 1, 3, 32, 32) and np.isfinite(r.activation).all()


def test_colour_matrix_reproduces_the_data_covariance_up_to_scale(data):
    m = color_sqrt(data).double()
    pixels = data.images[:2000].double().div(255).permute(1, 0, 2, 3).reshape(3, -1)
    cov = torch.cov(pixels)
    ratio = (m @ m.T) / cov
    assert torch.allclose(ratio, ratio[0, 0].expand(3, 3), rtol=1e-4)


def test_featvis_errors(data):
    model = resnet18(10, stem="cifar", width=4)
    with pytest.raises(UserError, match="unit 40 is out of range: layer4.1.conv2 has 32 channels"):
        visualize(model, "layer4.1.conv2", [1, 40], data, FeatVisSettings(steps=1))
    with pytest.raises(UserError, match="unknown layer 'layer9'; available"):
        visualize(model, "layer9", [1], data, FeatVisSettings(steps=1))
    with pytest.raises(UserError, match="unit 99 is out of range"):
        exemplars(model, "layer4.1.conv2", [99], data)


def test_featvis_command_on_a_finished_run(tmp_path, capsys):
    from conftest import run_cli

    out = tmp_path / "run"
    args = ["run", "demo", "workers=1", "seeds=[0]", "arms=[baseline]", "model.width=4", "recipe.epochs=1",
            "analysis.enabled=false", "sae.enabled=false", "toy.enabled=false", "featvis.units=[1,2]", "featvis.settings.steps=2", "--out", out, "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    z = np.load(out / "arms" / "baseline" / "seed0" / "featvis-layer4.1.conv2.npz")
    assert z["images"].shape == (2, 1, 3, 16, 16) and z["exemplar_images"].shape == (2, 9, 3, 16, 16)  # the demo: 16 px
    assert "Activation maximization (layer4.1.conv2)" in (out / "report.html").read_text()
    code, stdout, err = run_cli(["featvis", out, "--layer", "layer3.1.conv2", "--units", "0,3", "--steps", "2"], capsys)
    assert code == 0, err
    assert (out / "arms" / "baseline" / "seed0" / "featvis-layer3.1.conv2.npz").exists()
    assert "Activation maximization (layer3.1.conv2)" in (out / "report.html").read_text()
    code, _, err = run_cli(["featvis", out, "--units", "0,99"], capsys)
    assert code == 2 and "unit 99 is out of range: layer4.1.conv2 has 32 channels" in err and err.count("\n") == 1
    code, _, err = run_cli(["featvis", out, "--layer", "layer7"], capsys)
    assert code == 2 and "unknown layer 'layer7'" in err


def test_out_of_range_unit_in_config_fails_before_training(tmp_path, capsys):
    from conftest import run_cli

    code, _, err = run_cli(["run", "demo", "featvis.units=[500]", "--out", tmp_path, "--quiet"], capsys)
    assert code == 2 and "unit 500 is out of range: layer4.1.conv2 has 64 channels" in err
    assert not (tmp_path / "arms").exists()


def test_a_rectifier_layer_is_optimized_through_its_input(data):
    """After a ReLU, a unit that is 0 on the starting image has no gradient; its input has one, so even the
    planted units, all silent on a grey image, get their colour and edges when the ReLU itself is the target."""
    result = visualize(planted_model(), "relu", [0, 1, 2, 3], data, FeatVisSettings(steps=100, seed=0))
    assert (result.activation > 0.2).all(), result.activation
    mean_rgb = result.images[:3, 0].mean(axis=(2, 3))  # (units, channels)
    assert (mean_rgb.argmax(1) == [0, 1, 2]).all()
