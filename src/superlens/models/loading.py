"""Any user's model for ``superlens analyze``: ours, torchvision's, timm's, or a factory function.

A model spec is one of
    resnet18                      superlens's ResNet-18 (``stem``, ``width`` as options)
    torchvision:<name>            torchvision.models.get_model(<name>) (needs torchvision)
    timm:<name>                   timm.create_model(<name>) (needs timm)
    path/to/file.py:function      a function in a Python file
    package.module:function       a function in an importable module
A factory is called with ``num_classes=`` when its signature accepts it and must
return an ``nn.Module``. Weights come from a state-dict file (``.pt``/``.pth`` read
with ``weights_only=True``, or ``.safetensors``); a file holding a whole pickled
model is refused unless the user trusts it, since unpickling runs code from the file.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from superlens.errors import UserError, describe


def _optional(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"this model needs the {module} package; install it with `pip install {extra}`") from None


def _factory(spec: str):
    target, _, func = spec.rpartition(":")
    if not target or not func:
        raise UserError(f"model {spec!r} is not resnet18, torchvision:<name>, timm:<name> or <file.py or module>:<function>")
    try:
        if target.endswith(".py") or "/" in target or "\\" in target:
            path = Path(target).expanduser()
            if not path.exists():
                raise UserError(f"model factory file {path} not found")
            name = f"superlens_user_model_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot import the model factory {target!r} ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UserError(f"{target} has no function {func!r}")
    return fn


def _call(fn, num_classes: int | None, spec: str, **options) -> nn.Module:
    try:
        params = inspect.signature(fn).parameters
        accepts = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        accepts = False
    kwargs = dict(options)
    if accepts and num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = fn(**kwargs)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the model factory {spec!r} failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"the model factory {spec!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def build(spec: str, num_classes: int | None, options: dict[str, Any] | None = None,
          pretrained: str | None = None) -> nn.Module:
    """The architecture ``spec`` names, freshly built (no weights loaded yet).

    ``pretrained`` (``torchvision:`` and ``timm:`` models only): ``"pretrained"`` for the
    library's default weights, or ``"pretrained:<name>"`` for torchvision's named weights
    (e.g. ``pretrained:IMAGENET1K_V1``); downloaded by the library, so the machine must be
    online. The model then keeps its own head (e.g. 1,000 ImageNet classes).
    """
    options = dict(options or {})
    if spec == "resnet18":
        from superlens.models.resnet import resnet18

        known = {"stem", "width", "dropout"}
        return resnet18(num_classes or 1000, **{k: v for k, v in options.items() if k in known})
    if pretrained and not spec.startswith(("torchvision:", "timm:")):
        raise UserError(f"--weights {pretrained} is for torchvision: and timm: models; give {spec} a weight file")
    if spec.startswith("torchvision:"):
        models = _optional("torchvision.models", "torchvision")
        name = spec.split(":", 1)[1]
        kwargs: dict[str, Any] = {"num_classes": num_classes} if num_classes and not pretrained else {}
        if pretrained:
            kwargs["weights"] = pretrained.split(":", 1)[1] if ":" in pretrained else "DEFAULT"
        return _library_call(lambda: models.get_model(name, **kwargs), f"torchvision model {name!r}", pretrained)
    if spec.startswith("timm:"):
        timm = _optional("timm", "timm")
        name = spec.split(":", 1)[1]
        kwargs = {"num_classes": num_classes} if num_classes and not pretrained else {}
        return _library_call(lambda: timm.create_model(name, pretrained=bool(pretrained), **kwargs), f"timm model {name!r}",
                             pretrained)
    return _call(_factory(spec), num_classes, spec)


def _library_call(make, what: str, pretrained: str | None) -> nn.Module:
    try:
        return make()
    except Exception as exc:
        detail = describe(exc)
        if pretrained:
            raise UserError(f"cannot build the {what} with {pretrained} weights ({detail}); they are downloaded, "
                            "so the machine must be online, or save them once and pass the file") from None
        raise UserError(f"cannot build the {what} ({detail})") from None


def read_state(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: safetensors, a plain state dict, or one under a ``state_dict``/``model`` key."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"weight file {path} not found")
    if path.suffix == ".safetensors":
        st = _optional("safetensors.torch", "safetensors")
        return st.load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not trust_pickle:
            raise UserError(
                f"{path} is not a plain state dict (it holds pickled objects: {type(exc).__name__}); loading it would "
                "run code stored in the file. Save model.state_dict() instead, or pass --trust-pickle if you trust "
                "where the file came from"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict) and all(isinstance(v, torch.Tensor) for v in state[key].values()):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return state


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str, strict: bool = True) -> list[str]:
    """Load ``state`` into ``model``; a key or shape mismatch is an error that lists them, unless not ``strict``.

    Returns notes on what was left out when not strict.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''})")
    if wrong:
        problems.append("other shapes for " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3]))
    if problems and strict:
        raise UserError(f"{where} does not match the model: {'; '.join(problems)}. Pass --strict false to load the keys that match")
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in wrong}, strict=False)
    return [f"{where}: {p}; loaded the rest" for p in problems]
