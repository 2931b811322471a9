"""torchvision's ImageNet weights for ResNet-18, from a local file or the official URL."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from superlens.errors import UserError

IMAGENET1K_V1 = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
ALIASES = {"IMAGENET1K_V1": IMAGENET1K_V1, "imagenet": IMAGENET1K_V1}
# torchvision names files <name>-<first hex digits of the sha256>.pth.
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.pth$")


def _fetch(url: str) -> Path:
    from superlens.data.download import download

    match = HASH_IN_NAME.search(url)
    if match is None:
        raise UserError(f"{url} has no sha256 prefix in its name (<name>-<hex>.pth); download it and pass the local path")
    # torch.hub's checkpoint folder, so a file torchvision already fetched is reused.
    dest = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    return download(url, dest, match.group(1), algorithm="sha256")


def load_weights(model: nn.Module, path_or_url: str, strict_hash: bool = True) -> nn.Module:
    """Load a torchvision-format state dict into ``model`` in place and return it.

    ``path_or_url`` is a local file, an http(s) URL, or ``"IMAGENET1K_V1"``. Remote
    files are checked against the sha256 prefix in their name, as torchvision does;
    so is a local file whose name carries one when ``strict_hash``. When the file's
    ``fc`` has another class count than the model, the model keeps its own freshly
    initialized ``fc``. Any other mismatch is an error that names the key.
    """
    source = ALIASES.get(path_or_url, path_or_url)
    if source.startswith(("http://", "https://")):
        path = _fetch(source)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"weight file {path} not found; pass a path, a URL, or IMAGENET1K_V1")
        match = HASH_IN_NAME.search(path.name)
        if strict_hash and match:
            from superlens.data.download import check_digest

            check_digest(path, match.group(1), algorithm="sha256")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to unpickle means the file is not a state dict
        raise UserError(f"{path} is not a readable PyTorch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict")
    own = model.state_dict()
    if "fc.weight" in state and state["fc.weight"].shape != own["fc.weight"].shape:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        state.update({k: v for k, v in own.items() if k.startswith("fc.")})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"{path} does not match the model's layout ({detail}); is it a ResNet-18 state dict?")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise UserError(
                f"{path}: {key} has shape {tuple(value.shape)} but the model's is {tuple(own[key].shape)}"
                " (ImageNet weights need stem='imagenet' and width=64)"
            )
    model.load_state_dict(state)
    return model
