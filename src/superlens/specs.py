"""What each stage is told to do: one frozen dataclass per stage, checked when it is made.

The config dict (``config.yaml``) is the saved form of a study; ``stage_specs`` carves
it into these specs once, and each job carries only the specs its stages use. Stage
code takes specs, never the dict. Every field has its default and a one-line comment;
``RULES`` says what a valid value is (see ``checks``), so a bad setting fails here,
before any work, with a message that names its key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

from superlens.checks import (Rule, boolean, check, either, integer, known_keys, mapping, number, one_of,
                              optional, sequence_of, text)
from superlens.errors import UserError


class Spec:
    """Shared behaviour of the specs: checked on creation, built from a config section."""

    SECTION: ClassVar[str] = ""
    RULES: ClassVar[dict[str, Rule]] = {}

    def __post_init__(self) -> None:
        check(self)

    @classmethod
    def from_section(cls, values: dict[str, Any], **extra: Any):
        """The spec from a config section's keys that are its fields (lists become tuples)."""
        names = {f.name for f in fields(cls)}
        picked = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
        return cls(**{**picked, **extra})

    @classmethod
    def from_settings(cls, values: dict[str, Any], **extra: Any):
        """The spec from a mapping that must hold only its fields (a ``settings`` section)."""
        known_keys(cls, cls.SECTION, values)
        return cls.from_section(values, **extra)


@dataclass(frozen=True)
class DataSpec(Spec):
    SECTION = "data"
    RULES = {"name": text(), "options": mapping(), "download": boolean(),
             "train_subset": optional(integer(2)), "test_subset": optional(integer(2)),
             "imbalance": optional(number(1)),
             "mean": optional(sequence_of(number(), size=3)), "std": optional(sequence_of(number(), size=3))}

    name: str = "digits"  # digits, cifar10, tinyimagenet, synthetic, imagefolder:<path>, hf:<repo>
    root: str | None = None  # folder holding the dataset or its archive; None: $SUPERLENS_DATA
    download: bool = False  # fetch a missing official archive (checksum-verified)
    options: dict = field(default_factory=dict, hash=False)  # keyword arguments of the dataset's loader
    train_subset: int | None = None  # a fixed stratified subset of this many training images
    test_subset: int | None = None  # likewise for the test split
    imbalance: float | None = None  # long-tailed training pool: largest / smallest class count (test stays balanced)
    mean: tuple[float, ...] | None = None  # overrides the dataset's normalization mean
    std: tuple[float, ...] | None = None  # and std


@dataclass(frozen=True)
class ModelSpec(Spec):
    SECTION = "model"
    RULES = {"stem": one_of("imagenet", "cifar"), "width": integer(1), "dropout": number(0, 1, hi_open=True),
             "pretrained": optional(text())}

    stem: str = "cifar"  # "imagenet": 7x7 stride-2 conv + max-pool; "cifar": 3x3 stride-1, no pool
    width: int = 64  # channels of the first stage (64 is torchvision's ResNet-18)
    dropout: float = 0.0  # before the classifier head
    pretrained: str | None = None  # weights to start from, e.g. IMAGENET1K_V1


COMPILE_BACKENDS = ("inductor", "eager", "aot_eager")  # torch.compile backends recipe.compile may name
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Recipe(Spec):
    """How a model is trained and evaluated (the training stage's spec)."""

    SECTION = "recipe"
    RULES = {"optimizer": one_of("sgd", "adam"), "lr": number(0, lo_open=True), "momentum": number(0),
             "nesterov": boolean(), "weight_decay": number(0), "batch_size": integer(1), "epochs": integer(0),
             "steps": optional(integer(1)), "schedule": one_of("constant", "warmup_cosine", "warmup_linear"),
             "warmup_epochs": number(0), "label_smoothing": number(0, 1, hi_open=True), "crop_padding": integer(0),
             "flip": boolean(), "amp": one_of(True, False, "bf16", "fp16"),
             "compile": either(boolean(), one_of(*COMPILE_BACKENDS)), "compile_mode": one_of(*COMPILE_MODES),
             "input_size": optional(integer(1)), "eval_batch_size": integer(1)}

    optimizer: str = "sgd"  # "sgd" or "adam"
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = 5e-4
    batch_size: int = 256
    epochs: int = 30
    steps: int | None = None  # a fixed number of optimizer steps per training call (overrides epochs): equal compute
    schedule: str = "warmup_cosine"  # "constant", "warmup_cosine" or "warmup_linear"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    crop_padding: int = 4  # 0 turns random crops off
    flip: bool = True
    amp: bool | str = True  # True: mixed precision on CUDA (bf16, or fp16 + loss scaling where bf16 is not
    # supported); False: off; "bf16" / "fp16": that dtype on any device, the CPU included
    compile: bool | str = False  # torch.compile the model (True: inductor; or a backend: eager, aot_eager, inductor)
    compile_mode: str = "default"  # torch.compile's mode: default, reduce-overhead (CUDA graphs) or max-autotune
    input_size: int | None = None  # resize inputs on the device (e.g. 224); None keeps them
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.compile in COMPILE_MODES:  # the most likely slip: a mode where a backend goes
            raise UserError(f"recipe.compile={self.compile} is a torch.compile mode, not a backend: "
                            f"use recipe.compile=true recipe.compile_mode={self.compile}")
        super().__post_init__()


RECIPES: dict[str, Recipe] = {
    # As the study's notebooks trained: Adam 1e-3, batch 128, 20 epochs, no augmentation,
    # mixed precision; no weight decay, schedule or label smoothing.
    "devkar2024": Recipe(
        optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128, epochs=20, schedule="constant",
        warmup_epochs=0.0, label_smoothing=0.0, crop_padding=0, flip=False, amp=True,
    ),
    # A sound from-scratch recipe for small images.
    "standard": Recipe(),
}


def make_recipe(base: str | Recipe | dict = "standard", **overrides: Any) -> Recipe:
    """A recipe from a preset name (or Recipe, or dict with an optional ``name``) plus overrides."""
    if isinstance(base, dict):
        overrides = {**base, **overrides}
        base = overrides.pop("name", "standard")
    if isinstance(base, str):
        if base not in RECIPES:
            raise UserError(f"unknown recipe {base!r}; known: {', '.join(RECIPES)}")
        base = RECIPES[base]
    known_keys(Recipe, "recipe", overrides)
    return replace(base, **overrides)


INITIAL_SETS = ("random", "balanced", "typiclust", "probcover")
RESETS = ("warm", "scratch_same_init", "scratch_new_init")


@dataclass(frozen=True)
class ActiveSpec(Spec):
    SECTION = "active"
    RULES = {"initial_size": integer(0), "initial": one_of(*INITIAL_SETS),
             "query_size": either(integer(1), sequence_of(integer(1))),
             "rounds": either(integer(1), one_of("exhaust")).hinted("(zero rounds query nothing)"),
             "reset": one_of(*RESETS), "mc_samples": integer(2), "mc_dropout": number(0, 1, True, True),
             "strategy_options": mapping(), "start_from_baseline": boolean()}

    initial_size: int = 1000  # images labelled at random (or as ``initial`` says) before round 1
    initial: str = "random"  # "random", "balanced", or chosen by "typiclust" / "probcover" on the initial model
    query_size: int | tuple[int, ...] = 1000  # images queried per round: one number, or one per round
    rounds: int | str = 5  # query rounds, or "exhaust" to query until the pool is empty
    reset: str = "warm"  # between rounds: "warm" (continue), "scratch_same_init" or "scratch_new_init"
    mc_samples: int = 20  # dropout masks for bald
    mc_dropout: float = 0.5  # head dropout rate for bald when the model has none
    strategy_options: dict = field(default_factory=dict, hash=False)  # per strategy: keyword arguments of its select()
    start_from_baseline: bool = False  # round 0 continues the trained baseline's weights and optimizer state

    def __post_init__(self) -> None:
        super().__post_init__()
        q = self.query_size
        if isinstance(q, tuple) and self.rounds != "exhaust" and len(q) != self.rounds:
            raise UserError(f"active.query_size lists {len(q)} sizes but active.rounds={self.rounds}")

    def query_sizes(self, pool_size: int) -> list[int]:
        """The size of each round's query; raises when the budget exceeds a pool of ``pool_size`` images."""
        remaining = pool_size - self.initial_size
        if remaining < 0:
            raise UserError(f"active.initial_size={self.initial_size} is larger than the training pool ({pool_size} images)")
        q = self.query_size
        if self.rounds == "exhaust":
            sizes, step = [], 0
            while remaining > 0:
                size = min(remaining, q[min(step, len(q) - 1)] if isinstance(q, tuple) else q)
                sizes.append(size)
                remaining -= size
                step += 1
            return sizes
        sizes = list(q) if isinstance(q, tuple) else [q] * self.rounds
        if sum(sizes) > remaining:
            raise UserError(
                f"the budget ({self.initial_size} initial + {sum(sizes)} queried) is larger than the "
                f"training pool ({pool_size} images); lower active.query_size or active.rounds"
            )
        return sizes


POOLINGS = ("avg", "max", "flatten")


@dataclass(frozen=True)
class SnapshotSpec(Spec):
    """The per-round metrics taken after every active-learning round (``analysis.per_round``)."""

    SECTION = "analysis"
    RULES = {"layer": text(), "neuron_layer": text(), "pool": one_of(*POOLINGS), "max_samples": integer(1),
             "repeat_block": optional(text())}

    layer: str = "layer4"  # features for the geometry and cosine metrics
    neuron_layer: str = "layer4.1"  # units for the class selectivity (non-negative activations)
    pool: str = "avg"  # "avg", "max" or "flatten" over the layer's spatial positions
    max_samples: int = 10000  # test images (a fixed stratified subset beyond this)
    repeat_block: str | None = None  # runs this block twice (the study notebook's double layer4.1)


@dataclass(frozen=True)
class AnalysisSpec(Spec):
    """The analyses of a job's final model."""

    SECTION = "analysis"
    RULES = {**SnapshotSpec.RULES, "filter_layer": text(), "probe_samples": integer(1), "tsne": either(boolean(), one_of("first_seed")),
             "perplexity": number(0, lo_open=True), "topk": integer(1), "knn_k": integer(1)}

    layer: str = "layer4"  # features for geometry, t-SNE and sample cosines
    neuron_layer: str = "layer4.1"  # units for the neuron metrics (non-negative activations)
    filter_layer: str = "layer4.1.conv2"  # conv weights for the filter cosines
    pool: str = "avg"  # "avg", "max" or "flatten" over the layer's spatial positions
    max_samples: int = 10000  # test images analysed (a fixed stratified subset beyond this)
    probe_samples: int = 10000  # training images for the k-NN and linear probes
    tsne: bool | str = True  # "first_seed": only the study's first seed (the report's panels), not a per-seed metric
    perplexity: float = 30.0
    topk: int = 100  # top activating images per unit for the class entropy
    knn_k: int = 10
    repeat_block: str | None = None  # replays the study notebook's double layer4.1; paper preset only


@dataclass(frozen=True)
class SAESettings(Spec):
    """How one sparse autoencoder is trained."""

    SECTION = "sae.settings"
    RULES = {"kind": one_of("topk", "l1"), "expansion": integer(1), "k": integer(1), "l1": number(0),
             "steps": integer(1), "batch_size": integer(1), "lr": number(0, lo_open=True), "aux_k": integer(0),
             "aux_coef": number(0), "dead_after": integer(1), "seed": integer()}

    kind: str = "topk"  # "topk" or "l1"
    expansion: int = 8  # latents = expansion x input dimension
    k: int = 16  # active latents per vector (topk)
    l1: float = 1.0  # L1 coefficient on the summed latent activity (l1)
    steps: int = 3000
    batch_size: int = 2048
    lr: float = 1e-3
    aux_k: int = 64  # dead latents used by the auxiliary loss
    aux_coef: float = 1 / 32
    dead_after: int = 200_000  # training vectors without firing before a latent counts as dead
    seed: int = 0


@dataclass(frozen=True)
class SuperpositionSettings(Spec):
    """The psi protocol: several TopK SAEs with class gains trained to convergence on class-centred
    vectors; a latent counts as a feature when another seed reproduces it (docs/superposition.md has the bench)."""

    SECTION = "sae.superposition"
    RULES = {"seeds": integer(2), "k": integer(1), "expansion": integer(1), "max_steps": integer(1),
             "batch_size": integer(1), "lr": number(0, lo_open=True), "tolerance": number(0, lo_open=True),
             "window": integer(1), "match": number(0, 1, lo_open=True), "max_vectors": integer(2), "seed": integer(),
             "class_gains": boolean(), "tf32": boolean(), "bf16": boolean(),
             "settle_rule": boolean()}

    seeds: int = 3  # SAEs per model; psi is their mean, psi_sd their SD
    k: int = 4  # active latents per vector
    expansion: int = 8  # latents = expansion x neurons
    max_steps: int = 3000  # step cap of the convergence rule
    batch_size: int = 2048
    lr: float = 1e-3
    tolerance: float = 0.01  # converged when a window's mean loss moves less than this fraction
    window: int = 250  # steps per window of the convergence rule
    match: float = 0.9  # decoder cosine at which another seed reproduces a latent
    max_vectors: int = 100_000  # a seeded sample of the rows beyond this
    seed: int = 0  # the first SAE seed; the others follow it
    class_gains: bool = True  # with labels, each SAE learns a gain per class and neuron (train_saes)
    tf32: bool = True  # on CUDA, the SAEs' float32 products in TF32 (gpu_probe.py measures what it moves psi by)
    bf16: bool = True  # on a CPU with bf16 units, the product that picks each vector's k latents in bf16
    settle_rule: bool = True  # stop only when psi and the reproduced fraction settle too (SettleRule), not the loss alone

    def sae_settings(self) -> "SAESettings":
        return SAESettings(kind="topk", expansion=self.expansion, k=self.k, steps=self.max_steps,
                           batch_size=self.batch_size, lr=self.lr, seed=self.seed)


@dataclass(frozen=True)
class SAESpec(Spec):
    """The sparse-autoencoder stage of a job."""

    SECTION = "sae"
    RULES = {"layer": text(), "pooled": boolean(), "max_images": integer(1), "stability": boolean(),
             "per_round": boolean(), "test_images": integer(1), "topk": integer(1),
             "images": one_of("outside_pool", "pool"), "floor": boolean(),
             "planted": sequence_of(number(0, lo_open=True), nonempty=False)}

    layer: str = "layer4"  # one vector per image and position of this layer (post-ReLU block output)
    pooled: bool = False  # one spatially averaged vector per image instead
    max_images: int = 5000  # training images whose activations train the SAE
    # where they come from: training images outside the pool (no arm can label them; the same for every
    # arm, seed and round) when the split holds at least max_images of them, else the pool; or the pool
    images: str = "outside_pool"
    # psi of the seed's network at its initial weights (random, also for a pretrained model) on the same images,
    # measured once per seed for every arm: the floor a trained layer's psi is read against
    floor: bool = True
    # the positive control: psi with K = ratio x neurons known sparse directions added to the layer's vectors, for
    # each ratio, measured once per study (al-random's final model of the first seed, else the first arm's)
    planted: tuple[float, ...] = (0.5, 1.0)
    stability: bool = False  # train a second decoding SAE (another seed) and match decoders
    per_round: bool = False  # also psi for the model of every active-learning round
    settings: SAESettings = SAESettings()  # the decoding SAE (reconstruction, splicing, latent selectivity)
    superposition: SuperpositionSettings = SuperpositionSettings()  # the psi protocol
    test_images: int = 10000  # test images it is measured on (analysis.max_samples)
    topk: int = 100  # top images per unit or latent for the class entropy (analysis.topk)

    def settings_for(self, seed: int) -> SAESettings:
        return replace(self.settings, seed=seed)


@dataclass(frozen=True)
class FeatVisSettings(Spec):
    """How units are rendered by activation maximization."""

    SECTION = "featvis.settings"
    RULES = {"steps": integer(1), "lr": number(0, lo_open=True), "size": optional(integer(1)),
             "upsample_to": optional(integer(1)), "fourier": boolean(), "decay_power": number(),
             "decorrelate": boolean(), "normalize_input": boolean(), "pad": number(0), "jitter": number(0),
             "scales": sequence_of(number(0, lo_open=True)), "angles": sequence_of(number()),
             "images_per_unit": integer(1), "diversity": number(0), "seed": integer(), "init_scale": number(0)}

    steps: int = 512  # optimizer steps
    lr: float = 0.05  # Adam learning rate on the image parameters
    size: int | None = None  # optimized image size; None: the dataset's native size
    upsample_to: int | None = None  # resize the image before the model (the study used 224 for 32-px CIFAR)
    fourier: bool = True  # Fourier parametrization; False optimizes pixels directly
    decay_power: float = 1.0  # spectrum amplitudes scale as 1 / frequency ** decay_power
    decorrelate: bool = True  # colours through the square root of the data's RGB covariance
    normalize_input: bool = True  # apply the dataset's mean/std, as in training
    pad: float = 0.0625  # pad by this fraction of the size (grey) before the random transforms
    jitter: float = 0.0625  # random translation up to this fraction of the size
    scales: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)  # random scale per step
    angles: tuple[float, ...] = tuple(float(a) for a in range(-10, 11))  # random rotation (degrees)
    images_per_unit: int = 1  # several images per unit are pushed apart by the diversity term
    diversity: float = 0.0  # weight of the diversity penalty (Gram-matrix cosine between a unit's images)
    seed: int = 0
    init_scale: float = 0.01  # standard deviation of the initial parameters

    def at_input_size(self, input_size: int | None) -> "FeatVisSettings":
        """Optimize at the size the model was trained on (``recipe.input_size``) unless a size is named,
        so that optimized images and exemplars are measured alike."""
        if input_size and self.size is None and self.upsample_to is None:
            return replace(self, size=input_size)
        return self


@dataclass(frozen=True)
class FeatVisSpec(Spec):
    SECTION = "featvis"
    RULES = {"layer": text(), "units": sequence_of(integer(0)), "top": integer(1)}

    layer: str = "layer4.1.conv2"
    units: tuple[int, ...] = (8, 25, 54, 89, 131, 200, 221, 276, 340, 455, 500)  # those the study's notebook rendered
    top: int = 9  # dataset exemplars per unit
    settings: FeatVisSettings = FeatVisSettings()


@dataclass(frozen=True)
class ToySelection(Spec):
    SECTION = "toy.selection"
    RULES = {"sparsity": number(0, 1, hi_open=True), "pool": integer(1), "budget": integer(1), "initial": integer(1)}

    sparsity: float = 0.9  # feature sparsity of the pool
    pool: int = 20000  # vectors to select from
    budget: int = 2000  # vectors selected in all
    initial: int = 500  # of them drawn at random first

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.initial <= self.budget <= self.pool:
            raise UserError("toy.selection needs 0 < initial <= budget <= pool")


@dataclass(frozen=True)
class ToySpec(Spec):
    SECTION = "toy"
    RULES = {"n": integer(2), "m": integer(1), "sparsities": sequence_of(number(0, 1, hi_open=True)),
             "steps": integer(1), "phase_grid": integer(2), "questions": boolean()}

    n: int = 20  # features
    m: int = 5  # hidden dimensions
    sparsities: tuple[float, ...] = (0.0, 0.7, 0.9, 0.97, 0.99)
    steps: int = 3000
    phase_grid: int = 6  # sparsity x relative-importance grid of the n=2, m=1 phase diagram
    selection: ToySelection = ToySelection()
    seeds: tuple[int, ...] = (0,)  # the study's seeds: one selection experiment each
    questions: bool = True  # composition mediation, the memorisation curve and the lens strategies (superlens.toy.questions)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n <= self.m:
            raise UserError(f"toy needs n > m >= 1, got n={self.n}, m={self.m}")

    def selection_settings(self) -> dict[str, Any]:
        return asdict(self.selection)


@dataclass(frozen=True)
class RaySpec(Spec):
    SECTION = "ray"
    RULES = {"address": optional(text()), "gpus_per_job": optional(number(0)),
             "cpus_per_job": optional(number(0, lo_open=True)), "max_retries": integer(0)}

    address: str | None = None  # None: a local Ray (or RAY_ADDRESS); "host:port": that cluster
    gpus_per_job: float | None = None  # None: 1 when the cluster has GPUs, else 0; fractions share a GPU
    cpus_per_job: float | None = None  # None: CPUs per GPU of the GPU nodes with a GPU, else the local thread count
    max_retries: int = 2  # times a job is rerun when its worker process dies


@dataclass(frozen=True)
class StageSpecs:
    """Every stage's spec of one study; a disabled stage is None."""

    device: str
    seeds: tuple[int, ...]
    tracking: str  # "none", "tensorboard" or "wandb"
    data: DataSpec
    model: ModelSpec
    recipe: Recipe
    active: ActiveSpec
    snapshot: SnapshotSpec | None
    analysis: AnalysisSpec | None
    sae: SAESpec | None
    featvis: FeatVisSpec | None
    toy: ToySpec | None
    ray: RaySpec


def featvis_spec(section: dict[str, Any]) -> FeatVisSpec:
    """The featvis spec of a config's ``featvis`` section (enabled or not)."""
    return FeatVisSpec.from_section(section, settings=FeatVisSettings.from_settings(section["settings"]))


def stage_specs(cfg: dict[str, Any]) -> StageSpecs:
    """Carve a resolved config into the specs of its stages (checking each); the one reader of the
    stage sections of the dict."""
    a, s, fv, toy = cfg["analysis"], cfg["sae"], cfg["featvis"], cfg["toy"]
    analysis = AnalysisSpec.from_section(a)
    snapshot = SnapshotSpec.from_section(a)
    sae = SAESpec.from_section(s, settings=SAESettings.from_settings(s["settings"]), test_images=a["max_samples"],
                               topk=a["topk"], superposition=SuperpositionSettings.from_settings(s["superposition"]))
    featvis = featvis_spec(fv)
    toy_spec = ToySpec.from_section(toy, selection=ToySelection.from_section(toy["selection"]), seeds=tuple(cfg["seeds"]))
    return StageSpecs(
        device=cfg["device"], seeds=tuple(cfg["seeds"]), tracking=cfg.get("tracking", "none"),
        data=DataSpec.from_section(cfg["data"]), model=ModelSpec.from_section(cfg["model"]),
        recipe=make_recipe(dict(cfg["recipe"])), active=ActiveSpec.from_section(cfg["active"]),
        snapshot=snapshot if a["enabled"] and a["per_round"] else None,
        analysis=analysis if a["enabled"] else None,
        sae=sae if s["enabled"] else None,
        featvis=featvis if fv["enabled"] else None,
        toy=toy_spec if toy["enabled"] else None,
        ray=RaySpec.from_section(cfg["ray"]),
    )


__all__ = ["ActiveSpec", "AnalysisSpec", "DataSpec", "FeatVisSettings", "FeatVisSpec", "ModelSpec", "RECIPES",
           "RaySpec", "Recipe", "SAESettings", "SAESpec", "SuperpositionSettings", "SnapshotSpec", "StageSpecs", "ToySelection", "ToySpec",
           "featvis_spec", "make_recipe", "stage_specs"]
