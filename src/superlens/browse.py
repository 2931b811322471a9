"""``superlens browse`` and ``superlens diff``: feature pages and crosscoder model diffing of a run.

browse: for each (arm, seed) asked, the final model's layer (the study's SAE layer) on the SAE's
test images: every neuron and every latent of its decoding SAE (the one the sae stage saved in
``sae-<layer>/``, or trained now with the same settings when the run predates saved SAEs), one
page ``browse/<arm>-seed<k>-<layer>.html``.

diff: a crosscoder on the paired activations of two arms' final models (the same seed, the SAE's
training images, the SAE layer), ``diff/<A>-vs-<B>/seed<k>/diff.json`` and the page
``browse/diff-<A>-vs-<B>-seed<k>-<layer>.html``; without ``--arms``, every active-learning arm
against ``al-random`` for every seed. ``diff_models`` does the same for any two models.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from superlens.errors import UserError
from superlens.fileio import read_json, write_json
from superlens.rundir import RunDir

CONTROL = "al-random"
CROSSCODER_COLUMNS = [
    {"key": "id", "label": "latent", "type": "text"},
    {"key": "class", "label": "class", "type": "text",
     "help": "by relative decoder norm r = |d_B| / (|d_A| + |d_B|): A-only r < 0.1, B-only r > 0.9, shared 0.4..0.6"},
    {"key": "relative_norm", "label": "r (B share)", "type": "num"},
    {"key": "exclusivity", "label": "exclusivity", "type": "num", "help": "2 |r - 0.5|: 1 for one model only"},
    {"key": "density", "label": "density", "type": "num"},
    {"key": "class_selectivity", "label": "class sel.", "type": "num"},
    {"key": "top_class", "label": "top class", "type": "text"},
]


def _study(run_dir: str | Path) -> tuple[RunDir, dict[str, Any]]:
    run = RunDir(run_dir)
    if not run.config.exists():
        if (run.path / "options.json").exists():
            raise UserError(f"{run.path} is a superlens analyze folder: its feature pages are written by "
                            "`superlens analyze ... --browse`, and `superlens diff MODEL_A MODEL_B --data ...` "
                            "diffs two models")
        raise UserError(f"{run.path} is not a run directory (no config.yaml)")
    cfg = run.read_config()
    if not cfg["sae"]["enabled"]:
        raise UserError(f"{run.path} trained no SAE (sae.enabled=false); feature pages need one: rerun with "
                        "sae.enabled=true")
    return run, cfg


def _check(cfg: dict[str, Any], arms: Sequence[str], seeds: Sequence[int] | None) -> None:
    for arm in arms:
        if arm not in cfg["arms"]:
            raise UserError(f"unknown arm {arm!r}; this run's arms: {', '.join(cfg['arms'])}")
    for seed in seeds or ():
        if seed not in cfg["seeds"]:
            raise UserError(f"unknown seed {seed}; this run's seeds: {', '.join(map(str, cfg['seeds']))}")


class _Work:
    """One command's work on a locked run: its device, its dataset (loaded at the first ``splits``), the
    files written; ``_working`` rebuilds the report after it when any were."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from superlens.training import resolve_device

        self.device = resolve_device(cfg["device"])
        self.written: list[Path] = []
        self._splits = None

    def splits(self, job):
        from superlens.data import load_spec

        if self._splits is None:
            self._splits = load_spec(job.data, self.device)
        return self._splits


@contextmanager
def _working(run: RunDir, cfg: dict[str, Any]) -> Iterator[_Work]:
    from superlens.report.html import build_report
    from superlens.study import summarize

    with run.lock():
        work = _Work(cfg)
        yield work
        if work.written:
            build_report(run, summarize(run))


def _layer(cfg: dict[str, Any], layer: str | None) -> str:
    """The SAE layer of the run; another layer has no SAE."""
    sae_layer = cfg["sae"]["layer"]
    if layer is not None and layer != sae_layer:
        raise UserError(f"layer {layer!r} has no SAE in this run: its SAEs are on {sae_layer!r} (sae.layer)")
    return sae_layer


def browse_run(run_dir: str | Path, layer: str | None = None, arms: Sequence[str] = (), seeds: Sequence[int] | None = None,
               top: int = 9, threshold: float = 0.1, log: Callable[[str], None] = print) -> list[Path]:
    """Feature pages of a study's final models (every arm of the first seed unless told), and the
    report rebuilt with links to them."""
    from superlens.study.run import arm_job

    run, cfg = _study(run_dir)
    _check(cfg, arms, seeds)
    layer = _layer(cfg, layer)
    with _working(run, cfg) as work:
        for seed in seeds or [cfg["seeds"][0]]:
            for arm in arms or cfg["arms"]:
                job = arm_job(cfg, run, arm, seed)
                if not job.paths.model.exists():
                    log(f"{arm} seed {seed}: not finished, skipped")
                    continue
                t0 = time.perf_counter()
                page = browse_job(job, work.splits(job), work.device, run.browse_page(arm, seed, layer), top,
                                  threshold, log)
                log(f"{arm} seed {seed}: {page} ({time.perf_counter() - t0:.1f} s)")
                work.written.append(page)
    return work.written


def browse_job(job, splits, device, path: Path, top: int = 9, threshold: float = 0.1, log=None) -> Path:
    """The feature page of one job's final model at its SAE layer."""
    from superlens.analysis.features import capture
    from superlens.data import fixed_subset
    from superlens.study.stages import decoding_sae, final_model

    spec = job.sae
    model = final_model(job, splits)
    sae = decoding_sae(job, splits, device, model, log)
    test = fixed_subset(splits.test, spec.test_images)
    acts = capture(model, test, spec.layer, pool="avg" if spec.pooled else "none", recipe=job.recipe,
                   device=device)[spec.layer]
    featvis = None
    if job.paths.featvis(spec.layer).exists():
        with np.load(job.paths.featvis(spec.layer)) as f:
            featvis = (f["units"].tolist(), f["images"][:, 0])
    done = read_json(job.paths.done) if job.paths.done.exists() else {}
    accuracy = (done.get("records") or [{}])[-1].get("test_accuracy")
    kept = read_json(job.paths.sae)["metrics"] if job.paths.sae.exists() else {}
    return layer_page(path, f"Feature pages: {job.arm} seed {job.seed}, {spec.layer}",
                      [("model", f"{job.arm}, seed {job.seed}"), ("layer", spec.layer), ("test accuracy", _acc(accuracy))],
                      acts, sae, test, f"{len(test)} test images (sae.test_images)", top, threshold, featvis, kept)


def _acc(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{accuracy:.4f}"


def layer_page(path: Path, title: str, facts: list[tuple[str, str]], acts: np.ndarray, sae, data, which: str,
               top: int = 9, threshold: float = 0.1, featvis: tuple[list[int], np.ndarray] | None = None,
               kept: dict[str, Any] | None = None) -> Path:
    """One model's feature page at one layer: its activations ``acts`` on the images of ``data`` and
    its decoding SAE. ``featvis``: (rendered units, their (3, h, w) uint8 images); ``kept``: the
    stored SAE metrics to show beside the page's own."""
    from superlens.analysis.pages import layer_units
    from superlens.report.browse import write_page

    labels = data.labels.cpu().numpy()
    content = layer_units(acts, sae, labels, data.classes, top, threshold)
    uris = _attach_featvis(content["units"], featvis)
    facts = facts + [("neurons", str(acts.shape[1])),
                     ("SAE latents", f"{sae.W_dec.shape[0]} ({sae.settings.kind}, k {sae.settings.k})"),
                     ("images", which), ("loading threshold", f"{threshold:g} of a latent's decoder energy")]
    facts += _selectivity_facts(content["units"], kept or {})
    rows = np.asarray(content["images"], dtype=np.int64)
    note = ("Neurons: the layer's channels, activation per image averaged over positions. Latents: the decoding "
            "SAE's codes, averaged over the image's positions. A latent loads on a neuron when its decoder row puts at "
            "least the loading threshold of its energy there; a neuron's links are the live latents that load on it "
            "(how many features it carries), a latent's the neurons it loads on. Heatmaps: the unit at each position "
            "of the exemplar, on the unit's largest value over its exemplars.")
    return write_page(path, title, facts, note, content,
                      data.images[rows].cpu().numpy() if len(rows) else np.zeros((0, 3, 8, 8), np.uint8),
                      labels[rows], data.classes, np.unique(labels), link_titles={
                          "neuron": "Latents that load on this neuron", "latent": "Neurons this latent loads on"},
                      featvis=uris)


def _selectivity_facts(units: list[dict], kept: dict[str, Any]) -> list[tuple[str, str]]:
    """The page's mean class selectivity of live neurons and latents, beside the sae.json numbers."""
    out = []
    for kind in ("neuron", "latent"):
        live = [u["class_selectivity"] for u in units if u["kind"] == kind and u["live"]]
        if live:
            stored = kept.get(f"sae_{kind}_class_selectivity_mean")
            also = "" if stored is None else f" (sae.json {stored:.4f})"
            out.append((f"mean class selectivity, live {kind}s", f"{np.mean(live):.4f}{also}"))
    return out


def _attach_featvis(units: list[dict], featvis: tuple[list[int], np.ndarray] | None) -> list[str]:
    """Activation-maximization images of the rendered neurons as data URIs; each such neuron's record
    gets its image's index as ``featvis``."""
    from superlens.report.browse import png_uri

    if featvis is None:
        return []
    neurons = {u["index"]: u for u in units if u["kind"] == "neuron"}
    uris = []
    for unit, image in zip(*featvis):
        if unit in neurons:
            neurons[unit]["featvis"] = len(uris)
            uris.append(png_uri(image))
    return uris


# --- model diffing ---

def diff_run(run_dir: str | Path, arms: Sequence[str] = (), seeds: Sequence[int] | None = None,
             layer: str | None = None, crosscoder: dict[str, Any] | None = None, top: int = 9,
             log: Callable[[str], None] = print) -> list[Path]:
    """Crosscoder diffs of a study: the pair ``arms`` (A, B), or every AL arm against al-random; every
    seed unless told. The report is rebuilt with the counts."""
    from superlens.study.run import arm_job
    from superlens.study.measure import measurement_images
    from superlens.study.stages import final_model

    run, cfg = _study(run_dir)
    if arms:
        if len(arms) != 2 or arms[0] == arms[1]:
            raise UserError(f"--arms takes two different arms, A,B; got {','.join(arms)!r}")
        pairs = [tuple(arms)]
    else:
        if CONTROL not in cfg["arms"]:
            raise UserError(f"this run has no {CONTROL} arm to diff against; name the pair with --arms A,B")
        pairs = [(a, CONTROL) for a in cfg["arms"] if a not in ("baseline", CONTROL)]
        if not pairs:
            raise UserError(f"this run has no active-learning arm besides {CONTROL}; name the pair with --arms A,B")
    _check(cfg, arms, seeds)
    layer = _layer(cfg, layer)
    with _working(run, cfg) as work:
        for seed in seeds or cfg["seeds"]:
            for a, b in pairs:
                ja, jb = arm_job(cfg, run, a, seed), arm_job(cfg, run, b, seed)
                missing = [j.arm for j in (ja, jb) if not j.paths.model.exists()]
                if missing:
                    log(f"{a} vs {b} seed {seed}: {', '.join(missing)} not finished, skipped")
                    continue
                splits = work.splits(ja)
                t0 = time.perf_counter()
                images = measurement_images(ja, splits, work.device)[0]  # the psi protocol's images
                settings = _settings(cfg, seed, crosscoder or {})
                result = diff_models(final_model(ja, splits), final_model(jb, splits), layer, images, settings,
                                     recipe=ja.recipe, device=work.device, names=(a, b), top=top, pooled=ja.sae.pooled,
                                     log=log)
                path, page = write_diff(run.diff_dir(a, b, seed), result, images, run.diff_page(a, b, seed, layer),
                                        seed=seed, seconds=round(time.perf_counter() - t0, 2))
                c = result["json"]
                log(f"{a} vs {b} seed {seed}: {c['a_only']} {a}-only, {c['b_only']} {b}-only, {c['shared']} shared of "
                    f"{c['live']} live latents -> {page} ({time.perf_counter() - t0:.1f} s)")
                work.written.append(path)
    return work.written


def _settings(cfg: dict[str, Any], seed: int, given: dict[str, Any]):
    """The crosscoder's settings: ``given`` (e.g. steps, k) over the defaults, the batch no larger than the
    run's SAE batch."""
    from superlens.analysis.crosscoder import CrosscoderSettings

    batch = min(CrosscoderSettings.batch_size, cfg["sae"]["settings"].get("batch_size", CrosscoderSettings.batch_size))
    return CrosscoderSettings(**{"seed": seed, "batch_size": batch, **given})


def diff_models(model_a, model_b, layer: str, images, settings, recipe=None, device=None, names=("A", "B"),
                top: int = 9, pooled: bool = False, log=None) -> dict[str, Any]:
    """A crosscoder on the two models' activations at ``layer`` on ``images``; its counts and records
    (``json``), and the page content (``content``)."""
    from superlens.analysis.crosscoder import THRESHOLDS, diff_counts, fraction_unexplained, train_crosscoder
    from superlens.analysis.features import capture
    from superlens.analysis.pages import crosscoder_units
    from superlens.analysis.sae import conv_vectors, progress_log

    acts = [capture(m, images, layer, pool="avg" if pooled else "none", recipe=recipe, device=device)[layer]
            for m in (model_a, model_b)]
    if acts[0].shape[2:] != acts[1].shape[2:]:
        raise UserError(f"{layer}: the two models' outputs have different positions ({acts[0].shape[1:]} vs "
                        f"{acts[1].shape[1:]}); diff a layer where both have the same spatial size")
    vectors = [conv_vectors(a) for a in acts]
    cc = train_crosscoder(vectors[0], vectors[1], settings, device=device,
                          progress=progress_log(log, f"{names[0]} vs {names[1]}: crosscoder"))
    labels = images.labels.cpu().numpy()
    content = crosscoder_units(acts[0], acts[1], cc, labels, images.classes, top)
    kind = np.array([u["class"] for u in content["units"]])
    counts = diff_counts(kind)
    fvu_a, fvu_b = fraction_unexplained(cc, *vectors)
    records = [{k: u[k] for k in ("index", "class", "relative_norm", "density", "mean", "class_selectivity", "top_class")}
               for u in content["units"] if u["live"]]
    out = {"models": list(names), "layer": layer, "images": len(images), "vectors": len(vectors[0]),
           "dims": [int(v.shape[1]) for v in vectors], "latents": len(kind), "live": len(kind) - counts["dead"],
           **counts, "fvu_a": fvu_a, "fvu_b": fvu_b, "thresholds": THRESHOLDS, "settings": asdict(settings),
           "records": records}
    return {"json": out, "content": content, "crosscoder": cc}


def write_diff(folder: Path, result: dict[str, Any], images, page: Path | None = None, **extra: Any) -> tuple[Path, Path]:
    """``diff.json`` (the result's numbers and ``extra``) in ``folder`` and the diff's page (default
    ``folder/diff-<layer>.html``)."""
    c = result["json"]
    path = Path(folder) / "diff.json"
    write_json(path, {**c, **extra})
    title = " vs ".join(c["models"]) + (f", seed {extra['seed']}" if "seed" in extra else "")
    return path, _diff_page(page or Path(folder) / f"diff-{c['layer']}.html", result, images, title)


def _diff_page(path: Path, result: dict[str, Any], images, title: str) -> Path:
    from superlens.report.browse import write_page

    c = result["json"]
    a, b = c["models"]
    rows = np.asarray(result["content"]["images"], dtype=np.int64)
    labels = images.labels.cpu().numpy()
    facts = [("A", a), ("B", b), ("layer", c["layer"]), ("images", f"{c['images']} ({c['vectors']} vectors)"),
             ("latents", f"{c['latents']} ({c['live']} live)"), (f"{a}-only", str(c["a_only"])),
             (f"{b}-only", str(c["b_only"])), ("shared", str(c["shared"])), ("other", str(c["other"])),
             ("FVU A / B", f"{c['fvu_a']:.3f} / {c['fvu_b']:.3f}")]
    note = (f"A crosscoder: one sparse dictionary for both models, a decoder per model. r = |d_B| / (|d_A| + |d_B|) of "
            f"a latent says how much it writes into B ({b}) against A ({a}); exclusive latents are listed first. Each "
            "exemplar shows what the latent writes into A (left) and into B (right) at each position, on one scale. "
            "An exclusive latent is a candidate difference, not a proof: see docs/browse.md on crosscoder artefacts.")
    return write_page(path, f"Model diff: {title}", facts, note, result["content"], images.images[rows].cpu().numpy()
                      if len(rows) else np.zeros((0, 3, 8, 8), np.uint8), labels[rows], images.classes,
                      np.unique(labels), columns=CROSSCODER_COLUMNS, sort=("exclusivity", -1))
