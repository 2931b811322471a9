"""Models superlens did not train, as ``superlens analyze`` and ``superlens diff`` meet them: the
command line's MODEL / weight-file / key=value arguments told apart, the dataset with the
normalization the models expect, each model built and its weights loaded, and two such models
diffed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from superlens.errors import UserError

WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")


def split_args(args, weights=()) -> tuple[list[str], tuple[str, ...], list[str]]:
    """(model specs, weight files, key=value options) of the positional arguments: ``--weights a.pt b.pt``
    puts b.pt among them, so weight files are recognized by their suffix."""
    weights = tuple(weights) + tuple(a for a in args if "=" not in a and a.endswith(WEIGHT_SUFFIXES))
    specs = [a for a in args if "=" not in a and not a.endswith(WEIGHT_SUFFIXES)]
    return specs, weights, [a for a in args if "=" in a]


def numbers(text: str, what: str, positive: bool = False) -> tuple[float, float, float]:
    """--mean/--std: 1 number (for every channel) or 3, comma-separated."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 3):
        raise UserError(f"--{what} must be 1 or 3 comma-separated numbers, got {text!r}")
    if positive and min(values) <= 0:
        raise UserError(f"--{what} must be positive (it divides the pixels), got {text!r}")
    return values * 3 if len(values) == 1 else values


def normalization(pixels: str, mean: str | None, std: str | None) -> dict:
    """The mean/std (on the 0..1 scale the loader uses) that turn a dataset's pixels into what the model
    expects, and the words the report uses for it; ``None`` values keep the dataset's own."""
    scale = 255.0 if pixels == "raw" else 1.0
    m = numbers(mean, "mean") if mean else None
    s = numbers(std, "std", positive=True) if std else None
    if pixels != "dataset":  # raw or unit pixels: no normalization unless one is given, on that scale
        m = tuple(v / scale for v in m) if m else (0.0, 0.0, 0.0)
        s = tuple(v / scale for v in s) if s else (1.0 / scale,) * 3
    scale_words = {"dataset": "0..1 pixels", "unit": "0..1 pixels", "raw": "0..255 pixels"}[pixels]
    if m is None and s is None:
        words = f"{scale_words} normalized with the dataset's mean and std"
    else:
        def shown(values) -> str:
            return ", ".join(f"{x * scale:.4g}" for x in values) if values else "the dataset's"

        flags = " ".join(f for f, given in (("--mean", mean), ("--std", std)) if given)
        words = f"{scale_words}, mean {shown(m)}, std {shown(s)} (--pixels {pixels}{' ' + flags if flags else ''})"
    return {"mean": m, "std": s, "words": words}


def load_data(name: str, root: str | None, options: dict, norm: dict):
    """The dataset the models are analysed on, with the normalization they expect (``normalization``'s result)."""
    from dataclasses import replace

    from superlens.data import DatasetSplits, load

    splits = load(name, root=root, **options["data"]["options"])
    stats = {k: norm[k] for k in ("mean", "std") if norm[k] is not None}
    if stats:
        splits = DatasetSplits(replace(splits.train, **stats), replace(splits.test, **stats))
    return splits


def load_models(specs: list[str], weights: tuple[str, ...], splits, options: dict, trust_pickle: bool, strict: bool,
                note: Callable[[str], None] = print):
    """Each MODEL built, with its weights file or named pretrained weights loaded."""
    from superlens.models.loading import build, load_state, read_state

    num_classes = splits.train.num_classes if splits else None
    models, notes = [], []
    for i, spec in enumerate(specs):
        named = weights[i] if weights and weights[i].split(":", 1)[0] == "pretrained" else None
        model = build(spec, num_classes, options["model"] if spec == "resnet18" else None, pretrained=named)
        if weights and not named:
            notes += load_state(model, read_state(weights[i], trust_pickle), weights[i], strict)
        models.append(model)
    for line in notes:
        note(f"note: {line}")
    return models


def diff_two_models(specs, weights, overrides, data_name, root, layer, crosscoder, images, trust_pickle, out,
                    log: Callable[[str], None] = print) -> None:
    """`superlens diff MODEL_A MODEL_B --data ...`: the crosscoder diff of two models at one layer, written to
    ``out``; ``crosscoder``: settings over the defaults (steps, k)."""
    from superlens.analysis.crosscoder import CrosscoderSettings
    from superlens.analysis.features import check_layers
    from superlens.browse import diff_models, write_diff
    from superlens.data import fixed_subset
    from superlens.lens import options_from
    from superlens.training import resolve_device

    if len(specs) != 2:
        raise UserError(f"diff takes a run directory, or two models (MODEL_A MODEL_B); got {len(specs)}: {' '.join(specs)}")
    if not data_name:
        raise UserError("two models need --data NAME (and --root PATH): the images both models see")
    if not layer:
        raise UserError("two models need --layers L: the module whose outputs are compared")
    if weights and len(weights) != 2:
        raise UserError(f"give one --weights per MODEL: 2 models but {len(weights)} weight files")
    options = options_from(overrides)
    splits = load_data(data_name, root, options, normalization("dataset", None, None))
    models = load_models(specs, weights, splits, options, trust_pickle, True, log)
    for m in models:
        check_layers(m, [layer])
    names = [Path(w).stem for w in weights] if weights else [s.rsplit(":", 1)[-1] for s in specs]
    if names[0] == names[1]:
        names = [f"A-{names[0]}", f"B-{names[1]}"]
    settings = CrosscoderSettings(**{"seed": options["seed"], **crosscoder})
    subset = fixed_subset(splits.train, images)
    result = diff_models(models[0], models[1], layer, subset, settings, device=resolve_device(options["device"]),
                         names=tuple(names), log=log)
    path, page = write_diff(Path(out or "runs/diff"), result, subset)
    c = result["json"]
    log(f"{c['a_only']} {names[0]}-only, {c['b_only']} {names[1]}-only, {c['shared']} shared of {c['live']} live "
        f"latents: {path}, {page}")
