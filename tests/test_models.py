import hashlib

import pytest
import torch

from superlens.models import load_weights, resnet18
from superlens.errors import UserError


def torchvision_resnet18_layout(num_classes=1000, width=64, stem="imagenet"):
    """State-dict keys and shapes of torchvision's resnet18, written out from its architecture."""
    def bn(prefix, c):
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}

    k = 7 if stem == "imagenet" else 3
    layout = {"conv1.weight": (width, 3, k, k), **bn("bn1", width)}
    inplanes = width
    for layer, planes in enumerate([width, 2 * width, 4 * width, 8 * width], start=1):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            cin = inplanes if block == 0 else planes
            layout[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            layout.update(bn(f"{p}.bn1", planes))
            layout[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            layout.update(bn(f"{p}.bn2", planes))
            if block == 0 and layer > 1:
                layout[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                layout.update(bn(f"{p}.downsample.1", planes))
        inplanes = planes
    layout["fc.weight"] = (num_classes, 8 * width)
    layout["fc.bias"] = (num_classes,)
    return layout


def test_state_dict_matches_torchvision_layout():
    model = resnet18(1000)
    state = model.state_dict()
    expected = torchvision_resnet18_layout()
    assert list(state) == list(expected)  # same keys in the same order
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # torchvision's documented parameter count for resnet18
    assert sum(p.numel() for p in model.parameters()) == 11_689_512


def test_cifar_stem_and_width():
    model = resnet18(10, stem="cifar", width=16)
    expected = torchvision_resnet18_layout(10, 16, "cifar")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    assert model.embed(x).shape == (2, 128)
    names = dict(model.named_modules())
    assert "layer4.1.conv2" in names and "avgpool" in names
    # the cifar stem keeps 32x32 resolution into layer1
    feats = {}
    model.layer1.register_forward_hook(lambda m, i, o: feats.setdefault("l1", o))
    model(x)
    assert feats["l1"].shape[-2:] == (32, 32)


def test_bad_model_arguments():
    with pytest.raises(UserError, match="stem must be"):
        resnet18(10, stem="tiny")


def test_load_weights_replaces_fc_when_class_count_differs(tmp_path):
    torch.manual_seed(0)
    source = resnet18(1000, width=8)
    data = tmp_path / "w.pth"
    torch.save(source.state_dict(), data)
    target = resnet18(10, width=8)
    fc_before = target.fc.weight.clone()
    load_weights(target, str(data))
    assert torch.equal(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(target.fc.weight, fc_before)
    same = resnet18(1000, width=8)
    load_weights(same, str(data))
    assert torch.equal(same.fc.weight, source.fc.weight)


def test_load_weights_checks_hash_in_file_name_and_layout(tmp_path):
    state = resnet18(10, width=8).state_dict()
    good = tmp_path / "plain.pth"
    torch.save(state, good)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    named = tmp_path / f"resnet18-{digest[:8]}.pth"
    named.write_bytes(good.read_bytes())
    load_weights(resnet18(10, width=8), str(named))
    wrong = tmp_path / "resnet18-deadbeef.pth"
    wrong.write_bytes(good.read_bytes())
    with pytest.raises(UserError, match="wrong sha256 checksum"):
        load_weights(resnet18(10, width=8), str(wrong))
    with pytest.raises(UserError, match="conv1.weight has shape"):
        load_weights(resnet18(10, width=8, stem="cifar"), str(good))
    with pytest.raises(UserError, match="not found"):
        load_weights(resnet18(10), str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a readable PyTorch state dict"):
        load_weights(resnet18(10), str(tmp_path / "junk.pth"))
