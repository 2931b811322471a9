"""The study configuration: built-in defaults + a preset or YAML file + key=value overrides.

Everything is merged once, validated once, and written to the run directory as
``config.yaml``; every later stage reads only that resolved file.
"""

from __future__ import annotations

import inspect
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from superlens.errors import UserError

DEFAULTS: dict[str, Any] = {
    "name": "study",
    "seeds": [0, 1, 2],
    "device": "auto",  # "auto", "cpu", "cuda", "cuda:1", ...
    "executor": "local",  # "local": jobs one after another in this process; "ray": Ray tasks, in parallel
    "ray": {
        "address": None,  # null: start Ray on this machine (or join RAY_ADDRESS when set); "host:port": that cluster
        "gpus_per_job": None,  # null: 1 when the cluster has GPUs, else 0; fractions share a GPU
        "cpus_per_job": None,  # CPUs reserved per job, torch threads in it; null: 1 with a GPU, else the local thread count
        "max_retries": 2,  # times a job is rerun when its worker process dies (killed, out of memory, node lost)
    },
    "data": {
        "name": "digits", "root": None, "download": False, "options": {},
        "train_subset": None,  # a fixed stratified subset of this many training images
        "test_subset": None,  # likewise for the test split
        "mean": None,  # override the dataset's normalization mean (3 numbers)
        "std": None,  # and std
    },
    "model": {"stem": "cifar", "width": 64, "dropout": 0.0, "pretrained": None},
    "recipe": {"name": "standard"},  # a recipe name plus any Recipe field to override
    "arms": ["baseline", "al-least_confidence", "al-random"],
    "active": {
        "initial_size": 1000,
        "initial": "random",  # "random", "balanced", or chosen by "typiclust" / "probcover" on the initial model
        "query_size": 1000,  # one number, or a list with one size per round
        "rounds": 5,  # a number, or "exhaust" to query until the pool is empty
        "reset": "warm",  # "warm", "scratch_same_init" or "scratch_new_init"
        "mc_samples": 20,  # dropout masks for bald
        "mc_dropout": 0.5,  # head dropout rate for bald when the model has none
        "strategy_options": {},  # per strategy: keyword arguments of its select()
        "start_from_baseline": False,  # AL jobs start from the trained baseline's weights and optimizer state
    },
    "analysis": {
        "enabled": True,
        "layer": "layer4",  # features for geometry, t-SNE and sample cosines
        "pool": "avg",  # "avg", "max" or "flatten" over the layer's spatial positions
        "neuron_layer": "layer4.1",  # units for the neuron metrics (non-negative activations)
        "filter_layer": "layer4.1.conv2",  # conv weights for the filter cosines
        "max_samples": 10000,  # test images analysed (a fixed stratified subset beyond this)
        "probe_samples": 10000,  # training images for the k-NN and linear probes
        "tsne": True,
        "perplexity": 30.0,
        "topk": 100,  # top activating images per unit for the class entropy
        "knn_k": 10,
        "repeat_block": None,  # replays the study notebook's double layer4.1; paper preset only
        "headline_space": "features",  # where `silhouette` and `davies_bouldin` are computed: features or tsne
        "per_round": True,  # the headline superposition metrics after every active-learning round (rounds.csv)
    },
    "stats": {
        "test": "t",  # paired test over seeds: "t" (paired t-test) or "signflip" (exact sign-flip permutation)
    },
    "featvis": {
        "enabled": True,
        "layer": "layer4.1.conv2",
        "units": [8, 25, 54, 89, 131, 200, 221, 276, 340, 455, 500],  # those the study's notebook rendered
        "top": 9,  # dataset exemplars per unit
        "settings": {},  # any FeatVisSettings field: steps, lr, size, upsample_to, decorrelate, ...
    },
    "sae": {
        "enabled": True,
        "layer": "layer4",  # one vector per image and position of this layer (post-ReLU block output)
        "pooled": False,  # one spatially averaged vector per image instead
        "max_images": 5000,  # training images whose activations train the SAE
        "stability": True,  # train a second SAE (another seed) and match decoders
        "per_round": False,  # also psi for the model of every active-learning round (keeps each round's weights)
        "settings": {},  # any SAESettings field: kind, expansion, k, l1, steps, batch_size, lr, ...
    },
    "quirks": {name: False for name in ()},  # filled from QUIRKS below
    "paper": {},  # numbers a published study reports, to print beside this run's
    "toy": {
        "enabled": True,  # the toy-model lab, once per study (it does not use the trained models)
        "n": 20,
        "m": 5,
        "sparsities": [0.0, 0.7, 0.9, 0.97, 0.99],
        "steps": 3000,
        "phase_grid": 6,  # sparsity x relative-importance grid of the n=2, m=1 phase diagram
        "selection": {"sparsity": 0.9, "pool": 20000, "budget": 2000, "initial": 500},
    },
}
# Switches that replay what the study's notebooks did (Devkar 2024, arXiv 2412.16168).
# Each one, when on, sets exactly the config keys listed here and nothing else; when
# off, those keys keep the values of the preset, the user or the defaults.
QUIRKS: dict[str, dict[str, Any]] = {
    "warm_start_from_baseline": {"active.start_from_baseline": True},
    "metrics_on_tsne": {"analysis.headline_space": "tsne"},
    "double_layer4": {"analysis.repeat_block": "layer4.1"},
    "notebook_cifar_std": {"data.mean": [0.4914, 0.4822, 0.4465], "data.std": [0.2023, 0.1994, 0.2010]},
    "am_no_decorrelation": {"featvis.settings.decorrelate": False},
    "am_no_normalization": {"featvis.settings.normalize_input": False},
    "am_upsample_224": {"featvis.settings.upsample_to": 224},
}
DEFAULTS["quirks"] = {name: False for name in QUIRKS}

FREE_FORM = ("data.options", "recipe", "active.strategy_options", "featvis.settings", "sae.settings", "paper")
RESETS = ("warm", "scratch_same_init", "scratch_new_init")


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("superlens.presets").iterdir() if p.name.endswith(".yaml"))


def _read_source(source: str) -> DictConfig:
    path = Path(source)
    if source in preset_names():
        text = resources.files("superlens.presets").joinpath(f"{source}.yaml").read_text()
    elif path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    else:
        raise UserError(f"{source!r} is neither a preset ({', '.join(preset_names())}) nor an existing YAML file")
    try:
        loaded = OmegaConf.create(text)
    except (OmegaConfBaseException, ValueError) as exc:
        raise UserError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(loaded, DictConfig):
        raise UserError(f"{source}: the top level must be a mapping of keys")
    return loaded


def _strict_defaults() -> DictConfig:
    cfg = OmegaConf.create(DEFAULTS)
    OmegaConf.set_struct(cfg, True)
    for key in FREE_FORM:
        OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
    return cfg


def _merge(base: DictConfig, extra: DictConfig, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, extra)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or str(exc).splitlines()[0]
        raise UserError(f"unknown or invalid config key {key!r} in {where}; see `superlens presets` and docs/config.md") from None


def load_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Resolve defaults < preset/YAML ``source`` < ``key=value`` overrides into a validated dict."""
    cfg = _strict_defaults()
    if source is not None:
        cfg = _merge(cfg, _read_source(source), source)
    return _resolve(cfg, overrides)


def apply_overrides(cfg: dict[str, Any], overrides: list[str] | tuple[str, ...] = (),
                    where: str = "the stored config") -> dict[str, Any]:
    """``cfg`` completed with this version's defaults for keys it lacks, with ``key=value``
    overrides merged in, validated again."""
    return _resolve(_merge(_strict_defaults(), OmegaConf.create(cfg), where), overrides)


def resolve_stored(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A config read back from a run directory, completed with this version's defaults for keys
    it does not have (so runs made by an earlier version still load) and validated."""
    return apply_overrides(raw, (), where)


def _resolve(cfg: DictConfig, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value (e.g. active.rounds=3)")
        try:
            dotted = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as exc:
            raise UserError(f"cannot read override {item!r} ({exc})") from None
        cfg = _merge(cfg, dotted, f"override {item!r}")
    resolved = apply_quirks(OmegaConf.to_container(cfg, resolve=True))
    validate(resolved)
    return resolved


def apply_quirks(cfg: dict[str, Any]) -> dict[str, Any]:
    """Set the keys of every quirk that is on (see QUIRKS)."""
    for name, on in cfg["quirks"].items():
        if name not in QUIRKS:
            raise UserError(f"unknown quirk {name!r}; known: {', '.join(QUIRKS)}")
        if on:
            for dotted, value in QUIRKS[name].items():
                node = cfg
                *parents, leaf = dotted.split(".")
                for key in parents:
                    node = node[key]
                node[leaf] = value
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    from superlens.active.strategies import REGISTRY
    from superlens.training import make_recipe

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    need(cfg["executor"] in ("local", "ray"), f"executor must be 'local' or 'ray', got {cfg['executor']!r}")
    r = cfg["ray"]
    need(r["gpus_per_job"] is None or (isinstance(r["gpus_per_job"], (int, float)) and r["gpus_per_job"] >= 0),
         f"ray.gpus_per_job must be null or a number >= 0, got {r['gpus_per_job']!r}")
    need(r["cpus_per_job"] is None or (isinstance(r["cpus_per_job"], (int, float)) and r["cpus_per_job"] > 0),
         "ray.cpus_per_job must be null or a positive number")
    need(isinstance(r["max_retries"], int) and r["max_retries"] >= 0, "ray.max_retries must be an integer >= 0")
    seeds = cfg["seeds"]
    need(isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds),
         f"seeds must be a non-empty list of integers, got {seeds!r}")
    need(len(set(seeds)) == len(seeds), f"seeds must not repeat, got {seeds!r}")
    arms = cfg["arms"]
    need(isinstance(arms, list) and arms, "arms must be a non-empty list, e.g. [baseline, al-least_confidence, al-random]")
    for arm in arms:
        if arm != "baseline":
            need(arm.startswith("al-"), f"arm {arm!r} must be 'baseline' or 'al-<strategy>'")
            if arm[3:] not in REGISTRY:
                raise UserError(f"unknown strategy {arm[3:]!r} in arm {arm!r}; known: {', '.join(REGISTRY)}")
    need(len(set(arms)) == len(arms), f"arms must not repeat, got {arms!r}")
    make_recipe(dict(cfg["recipe"]))
    model = cfg["model"]
    need(model["stem"] in ("imagenet", "cifar"), f"model.stem must be 'imagenet' or 'cifar', got {model['stem']!r}")
    need(isinstance(model["width"], int) and model["width"] >= 1, f"model.width must be a positive integer, got {model['width']!r}")
    need(0 <= model["dropout"] < 1, f"model.dropout must lie in [0, 1), got {model['dropout']!r}")
    al = cfg["active"]
    need(isinstance(al["initial_size"], int) and al["initial_size"] >= 0,
         f"active.initial_size must be an integer >= 0, got {al['initial_size']!r}")
    initials = ("random", "balanced", "typiclust", "probcover")
    need(al["initial"] in initials, f"active.initial must be one of {', '.join(initials)}, got {al['initial']!r}")
    rounds = al["rounds"]
    need(rounds == "exhaust" or (isinstance(rounds, int) and rounds >= 1),
         f"active.rounds must be a positive integer or 'exhaust', got {rounds!r} (zero rounds query nothing)")
    q = al["query_size"]
    sizes = q if isinstance(q, list) else [q]
    need(all(isinstance(s, int) and s >= 1 for s in sizes) and sizes, f"active.query_size must be positive integers, got {q!r}")
    if isinstance(q, list) and rounds != "exhaust":
        need(len(q) == rounds, f"active.query_size lists {len(q)} sizes but active.rounds={rounds}")
    need(al["reset"] in RESETS, f"active.reset must be one of {', '.join(RESETS)}, got {al['reset']!r}")
    need(isinstance(al["mc_samples"], int) and al["mc_samples"] >= 2, "active.mc_samples must be an integer >= 2")
    need(0 < al["mc_dropout"] < 1, "active.mc_dropout must lie in (0, 1)")
    an = cfg["analysis"]
    need(an["pool"] in ("avg", "max", "flatten"), f"analysis.pool must be avg, max or flatten, got {an['pool']!r}")
    for key in ("max_samples", "probe_samples", "topk", "knn_k"):
        need(isinstance(an[key], int) and an[key] >= 1, f"analysis.{key} must be a positive integer, got {an[key]!r}")
    need(an["perplexity"] > 0, f"analysis.perplexity must be positive, got {an['perplexity']!r}")
    d = cfg["data"]
    for key in ("train_subset", "test_subset"):
        need(d[key] is None or (isinstance(d[key], int) and d[key] >= 2), f"data.{key} must be null or an integer >= 2")
    for key in ("mean", "std"):
        need(d[key] is None or (isinstance(d[key], list) and len(d[key]) == 3), f"data.{key} must be null or 3 numbers")
    need(cfg["analysis"]["headline_space"] in ("features", "tsne"), "analysis.headline_space must be features or tsne")
    from superlens.analysis.stats import TESTS

    need(cfg["stats"]["test"] in TESTS, f"stats.test must be one of {', '.join(TESTS)}, got {cfg['stats']['test']!r}")
    if al["start_from_baseline"]:
        need("baseline" in cfg["arms"] and cfg["arms"][0] == "baseline",
             "active.start_from_baseline needs 'baseline' as the first arm (its trained model is where AL starts)")
    fv = cfg["featvis"]
    need(isinstance(fv["units"], list) and fv["units"] and all(isinstance(u, int) for u in fv["units"]),
         f"featvis.units must be a non-empty list of channel indices, got {fv['units']!r}")
    need(isinstance(fv["top"], int) and fv["top"] >= 1, f"featvis.top must be a positive integer, got {fv['top']!r}")
    featvis_settings(fv)
    sae_settings(cfg["sae"])
    need(isinstance(cfg["sae"]["max_images"], int) and cfg["sae"]["max_images"] >= 1, "sae.max_images must be a positive integer")
    toy = cfg["toy"]
    need(all(0 <= s < 1 for s in toy["sparsities"]), f"toy.sparsities must lie in [0, 1), got {toy['sparsities']!r}")
    need(toy["m"] >= 1 and toy["n"] > toy["m"], f"toy needs n > m >= 1, got n={toy['n']}, m={toy['m']}")
    sel = toy["selection"]
    need(0 < sel["initial"] <= sel["budget"] <= sel["pool"], "toy.selection needs 0 < initial <= budget <= pool")
    for name, options in al["strategy_options"].items():
        need(name in REGISTRY, f"active.strategy_options names unknown strategy {name!r}; known: {', '.join(REGISTRY)}")
        accepted = list(inspect.signature(REGISTRY[name].select).parameters)[3:]
        for key in options or {}:
            need(key in accepted, f"strategy {name!r} has no option {key!r}; its options: {', '.join(accepted) or 'none'}")


def _settings(cls, section: str, values: dict[str, Any]):
    """``cls`` (a settings dataclass) from a config's ``<section>.settings``; unknown fields are an error."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise UserError(f"unknown {section}.settings key {key!r}; known: {', '.join(sorted(known))}")
    return cls(**values)


def featvis_settings(featvis: dict[str, Any]):
    """The FeatVisSettings of a config's ``featvis`` section; unknown fields are an error."""
    from superlens.analysis.featvis import FeatVisSettings

    values = {k: tuple(v) if isinstance(v, list) else v for k, v in featvis["settings"].items()}
    return _settings(FeatVisSettings, "featvis", values)


def sae_settings(section: dict[str, Any], seed: int = 0):
    """The SAESettings of a config's ``sae`` section (with ``seed``); unknown fields are an error."""
    from superlens.analysis.sae import SAESettings  # a leaf module: it imports no other stage

    return _settings(SAESettings, "sae", {**section["settings"], "seed": seed})


def query_sizes(active: dict[str, Any], pool_size: int) -> list[int]:
    """The size of each round's query; raises when the budget exceeds the pool."""
    remaining = pool_size - active["initial_size"]
    if remaining < 0:
        raise UserError(f"active.initial_size={active['initial_size']} is larger than the training pool ({pool_size} images)")
    q = active["query_size"]
    if active["rounds"] == "exhaust":
        sizes, step = [], 0
        while remaining > 0:
            size = min(remaining, q[min(step, len(q) - 1)] if isinstance(q, list) else q)
            sizes.append(size)
            remaining -= size
            step += 1
        return sizes
    sizes = q if isinstance(q, list) else [q] * active["rounds"]
    if sum(sizes) > remaining:
        raise UserError(
            f"the budget ({active['initial_size']} initial + {sum(sizes)} queried) is larger than the "
            f"training pool ({pool_size} images); lower active.query_size or active.rounds"
        )
    return list(sizes)


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, ValueError, OSError) as exc:
        raise UserError(f"cannot read {path} ({exc})") from None


def to_yaml(cfg: dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(cfg))


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The dotted key where two config trees first differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{prefix}{key}"
            found = first_difference(a[key], b[key], f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".")
