"""The study configuration: built-in defaults + a preset or YAML file + key=value overrides.

Everything is merged once and validated once (each stage's part by carving its spec,
see ``specs``); the resolved dict is written to the run directory as ``config.yaml``
and read back on resume. Stages never see the dict: they get their specs.
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
    "tracking": "none",  # "tensorboard" or "wandb": each job's rounds, SAE curves and psi per round as a tracked run
    "executor": "local",  # "local": jobs on this machine (see workers); "ray": Ray tasks, in parallel
    "workers": 1,  # executor=local: jobs side by side in this many processes, the torch threads split among them
    "ray": {
        "address": None,  # null: start Ray on this machine (or join RAY_ADDRESS when set); "host:port": that cluster
        "gpus_per_job": None,  # null: 1 when the cluster has GPUs, else 0; fractions share a GPU
        "cpus_per_job": None,  # CPUs reserved per job, torch threads in it; null: the CPUs per GPU with a GPU, else the local threads
        "max_retries": 2,  # times a job is rerun when its worker process dies (killed, out of memory, node lost)
    },
    "data": {
        "name": "digits", "root": None, "download": False, "options": {},
        "train_subset": None,  # a fixed stratified subset of this many training images
        "test_subset": None,  # likewise for the test split
        "imbalance": None,  # a long-tailed training pool: largest / smallest class, exponential profile (test stays balanced)
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
        "tsne": True,  # false, or first_seed: the report's panels only (t-SNE leaves a GPU idle 6-25 s per job)
        "perplexity": 30.0,
        "topk": 100,  # top activating images per unit for the class entropy
        "knn_k": 10,
        "repeat_block": None,  # replays the study notebook's double layer4.1; paper preset only
        "headline_space": "features",  # where `silhouette` and `davies_bouldin` are computed: features or tsne
        "per_round": True,  # the headline superposition metrics after every active-learning round (rounds.csv)
    },
    "stats": {
        "test": "t",  # paired test over seeds: "t" (paired t-test) or "signflip" (exact sign-flip permutation)
        "primary": "psi",  # the one metric tested alone at alpha 0.05 against al-random, reported first
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
        "images": "outside_pool",  # outside_pool (training images no arm can label, when there are max_images) | pool
        "floor": True,  # psi of the seed's network at its initial weights on the same images (sae.json "floor")
        "planted": [0.5, 1.0],  # planted features per neuron of the positive control, once per study ([]: off)
        "stability": False,  # train a second decoding SAE (another seed) and match decoders (sae_stability)
        "per_round": False,  # also psi for the model of every active-learning round (keeps each round's weights)
        "settings": {},  # the decoding SAE: any SAESettings field: kind, expansion, k, l1, steps, batch_size, lr, ...
        "superposition": {},  # the psi protocol: any SuperpositionSettings field: seeds, k, expansion, max_steps, ...
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
        "questions": True,  # composition mediation, the memorisation curve, the lens strategies (docs/superposition.md)
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

FREE_FORM = ("data.options", "recipe", "active.strategy_options", "featvis.settings", "sae.settings",
             "sae.superposition", "paper")


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
    """Check the study-wide keys and the rules that tie sections together, then carve (and so
    check) every stage's spec."""
    from superlens.analysis.stats import TESTS
    from superlens.specs import stage_specs

    _check_study(cfg)
    need(cfg["analysis"]["headline_space"] in ("features", "tsne"), "analysis.headline_space must be features or tsne")
    need(not (cfg["analysis"]["headline_space"] == "tsne" and cfg["analysis"]["tsne"] == "first_seed"),
         "analysis.headline_space=tsne compares t-SNE metrics over every seed; use analysis.tsne=true with it")
    need(cfg["stats"]["test"] in TESTS, f"stats.test must be one of {', '.join(TESTS)}, got {cfg['stats']['test']!r}")
    need(isinstance(cfg["stats"]["primary"], str) and cfg["stats"]["primary"],
         f"stats.primary must name one metric (e.g. psi or test_accuracy), got {cfg['stats']['primary']!r}")
    specs = stage_specs(cfg)
    if specs.active.start_from_baseline:
        need("baseline" in cfg["arms"] and cfg["arms"][0] == "baseline",
             "active.start_from_baseline needs 'baseline' as the first arm (its trained model is where AL starts)")
    _check_strategy_options(specs.active.strategy_options)


def need(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _check_study(cfg: dict[str, Any]) -> None:
    from superlens.active.strategies import REGISTRY, parse_arm

    need(cfg["executor"] in ("local", "ray"), f"executor must be 'local' or 'ray', got {cfg['executor']!r}")
    workers = cfg["workers"]
    need(isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1,
         f"workers must be a whole number >= 1, got {workers!r}")
    need(workers == 1 or cfg["executor"] == "local",
         f"workers={workers} is for executor=local; with executor=ray, ray.cpus_per_job sets how jobs share the CPUs")
    need(cfg["tracking"] in ("none", "tensorboard", "wandb"),
         f"tracking must be 'none', 'tensorboard' or 'wandb', got {cfg['tracking']!r}")
    seeds = cfg["seeds"]
    need(isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds),
         f"seeds must be a non-empty list of integers, got {seeds!r}")
    need(len(set(seeds)) == len(seeds), f"seeds must not repeat, got {seeds!r}")
    arms = cfg["arms"]
    need(isinstance(arms, list) and arms, "arms must be a non-empty list, e.g. [baseline, al-least_confidence, al-random]")
    for arm in arms:
        if arm != "baseline":
            need(arm.startswith("al-"), f"arm {arm!r} must be 'baseline' or 'al-<strategy>'")
            name, _ = parse_arm(arm)
            need(name in REGISTRY, f"unknown strategy {name!r} in arm {arm!r}; known: {', '.join(REGISTRY)}")
    need(len(set(arms)) == len(arms), f"arms must not repeat, got {arms!r}")


def _check_strategy_options(strategy_options: dict[str, Any]) -> None:
    from superlens.active.strategies import REGISTRY

    for name, options in strategy_options.items():
        need(name in REGISTRY, f"active.strategy_options names unknown strategy {name!r}; known: {', '.join(REGISTRY)}")
        accepted = list(inspect.signature(REGISTRY[name].select).parameters)[3:]
        for key in options or {}:
            need(key in accepted, f"strategy {name!r} has no option {key!r}; its options: {', '.join(accepted) or 'none'}")


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
