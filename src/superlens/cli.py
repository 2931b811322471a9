"""The ``superlens`` command line. User mistakes end with one line on stderr and exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from superlens.errors import UserError, describe


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="superlens")
def cli() -> None:
    """Measure superposition in vision models and how training data changes it."""


@cli.group()
def data() -> None:
    """Inspect datasets."""


@data.command("check")
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Folder holding the dataset or its archive (default: $SUPERLENS_DATA or ~/.cache/superlens/data).")
@click.option("--download", is_flag=True, help="Fetch the official archive if it is missing (checksum-verified).")
def data_check(name: str, root: str | None, download: bool) -> None:
    """Load dataset NAME and print its split sizes and per-class counts."""
    from superlens.data import load

    splits = load(name, root=root, download=download)
    train, test = splits
    c, h, w = train.images.shape[1:]
    click.echo(f"{train.name}: {train.num_classes} classes, images {c}x{h}x{w} uint8")
    click.echo(f"train {len(train):>7d} images")
    click.echo(f"test  {len(test):>7d} images")
    width = max(5, max(len(n) for n in train.classes))
    click.echo(f"{'class':<{width}}  {'train':>7}  {'test':>7}")
    for name_, a, b in zip(train.classes, train.class_counts(), test.class_counts()):
        click.echo(f"{name_:<{width}}  {a:>7d}  {b:>7d}")


def _run(source: str | None, overrides: tuple[str, ...], out: str | None, quiet: bool) -> None:
    from superlens.config import load_config
    from superlens.study import run_study

    cfg = load_config(source, overrides)
    out = out or f"runs/{cfg['name']}"
    click.echo(f"run directory: {out}")
    summary = run_study(cfg, out, progress=not quiet, log=click.echo)
    _print_summary(summary)
    click.echo(f"report: {out}/report.html")


def _placement(overrides: tuple[str, ...]) -> list[str]:
    from superlens.rundir import PLACEMENT

    for item in overrides:
        if item.split("=", 1)[0].split(".", 1)[0] not in PLACEMENT:
            raise UserError(f"resume takes only executor and ray.* settings, got {item!r}; the rest of a run's config is fixed")
    return list(overrides)


def _num(v, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def _print_summary(summary: dict | None) -> None:
    if summary is None:
        return
    click.echo(f"{'arm':<24} {'labels':>7} {'test acc [95% CI]':>26} {'AUBC':>7} {'acc minus al-random [95% CI], p_adj':>40}")
    for arm, m in summary["arms"].items():
        lo, hi = m.get("test_accuracy_ci95", [None, None])
        acc = f"{_num(m['test_accuracy'])} [{_num(lo)}, {_num(hi)}]"
        aubc = _num(m.get("aubc"))
        vs = m.get("vs_random", {}).get("test_accuracy")
        diff = "-"
        if vs and vs["difference"] is not None:
            dlo, dhi = vs["difference_ci95"]
            diff = f"{vs['difference']:+.4f} [{_num(dlo, '+.4f')}, {_num(dhi, '+.4f')}], {_num(vs['p_adjusted'], '.3g')}"
        click.echo(f"{arm:<24} {m['n_labeled']:>7} {acc:>26} {aubc:>7} {diff:>40}")
    stats = summary.get("statistics")
    if stats:
        click.echo(f"intervals: {stats['interval']}; test: {stats['test']}, Holm-adjusted")
    comparison = summary.get("paper_comparison")
    if comparison:
        click.echo(f"paper vs this run ({', '.join(comparison['quirks_on']) or 'no quirks'}):")
        for row in comparison["rows"]:
            ours = "not computed" if row["ours"] is None else f"{row['ours']:.4f}"
            click.echo(f"  {row['arm']:<22} {row['metric']:<16} paper {row['paper']:<8} ours {ours}")


_out_option = click.option("--out", type=click.Path(file_okay=False), default=None,
                           help="Run directory (default: runs/<config name>). An existing one with the same config is continued.")
_quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
@_out_option
@_quiet_option
def demo(overrides: tuple[str, ...], out: str | None, quiet: bool) -> None:
    """Run the built-in demo study (digits, narrow ResNet-18, baseline vs active learning), with key=value
    overrides as `run demo` takes them (e.g. arms=[al-random,al-random@2,al-latent_coverage])."""
    _run("demo", overrides, out or "runs/demo", quiet)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("preset_or_yaml")
@click.argument("overrides", nargs=-1)
@_out_option
@_quiet_option
def run(preset_or_yaml: str, overrides: tuple[str, ...], out: str | None, quiet: bool) -> None:
    """Run a study from a preset name or a YAML file, with key=value overrides."""
    _run(preset_or_yaml, overrides, out, quiet)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("overrides", nargs=-1)
@_quiet_option
def resume(run_dir: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Finish an interrupted run; finished jobs and rounds are not recomputed.

    OVERRIDES may change where jobs run (executor=ray, ray.address=..., ray.gpus_per_job=...).
    """
    from superlens.config import apply_overrides
    from superlens.rundir import RunDir
    from superlens.study import run_study

    cfg = apply_overrides(RunDir(run_dir).read_config(), _placement(overrides))
    _print_summary(run_study(cfg, run_dir, progress=not quiet, log=click.echo))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
def report(run_dirs: tuple[str, ...]) -> None:
    """Rebuild report.html, summary.json and rounds.csv of runs from their finished jobs."""
    from superlens.report.html import build_report
    from superlens.rundir import RunDir
    from superlens.study import summarize

    for run_dir in run_dirs:
        run = RunDir(run_dir)
        summary = summarize(run)
        path = build_report(run, summary)
        click.echo(f"{run_dir}: wrote {path}")
        _print_summary(summary)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--arm", required=True, help="The active-learning arm, e.g. al-margin.")
@click.option("--seed", type=int, required=True, help="The seed of the arm's job.")
@click.option("--round", "round_", type=int, default=None, help="Only this round (0: the initial set; default: all).")
@click.option("--format", "fmt", type=click.Choice(["csv", "labelstudio"]), default="csv", show_default=True)
@click.option("--image-root", default=None, help="labelstudio: the URL or folder the image ids are relative to "
              "(datasets of files); without it each image is embedded as a PNG data URI.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="File to write (default: standard output).")
def queries(run_dir: str, arm: str, seed: int, round_: int | None, fmt: str, image_root: str | None,
            out: str | None) -> None:
    """The images an arm queried: round, rank, id, true and predicted label, confidence and score."""
    from superlens.export import image_sources, query_rows, to_csv, to_labelstudio
    from superlens.fileio import write_text

    rows = query_rows(run_dir, arm, seed, round_)
    if fmt == "csv":
        text = to_csv(rows)
    else:
        images = image_sources(run_dir, [r["id"] for r in rows], image_root)
        text = to_labelstudio(rows, images, f"{arm}/seed{seed}")
    if out is None:
        click.echo(text, nl=False)
    else:
        write_text(out, text)
        click.echo(f"{len(rows)} queried images -> {out}", err=True)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--layer", default=None, help="Layer to visualize (default: the run's featvis.layer).")
@click.option("--units", default=None, help="Comma-separated channel indices (default: the run's featvis.units).")
@click.option("--steps", type=int, default=None, help="Optimizer steps (default: the run's featvis settings).")
@click.option("--arm", "arms", multiple=True, help="Only these arms (repeatable; default: every arm).")
def featvis(run_dir: str, layer: str | None, units: str | None, steps: int | None, arms: tuple[str, ...]) -> None:
    """Activation maximization and dataset exemplars for a finished run; adds them to report.html."""
    from dataclasses import replace

    from superlens.data import load_spec
    from superlens.report.html import build_report
    from superlens.rundir import RunDir
    from superlens.study import summarize
    from superlens.study.run import arm_job, check_units
    from superlens.study.stages import featvis_stage
    from superlens.models import config_model
    from superlens.training import resolve_device

    run = RunDir(run_dir)
    cfg = run.read_config()
    seed = cfg["seeds"][0]
    unknown = [a for a in arms if a not in cfg["arms"]]
    if unknown:
        raise UserError(f"arm {unknown[0]!r} is not in this run; its arms: {', '.join(cfg['arms'])}")
    jobs = [arm_job(cfg, run, arm, seed) for arm in arms or cfg["arms"]]
    spec = jobs[0].featvis
    layer = layer or spec.layer
    try:
        unit_list = [int(u) for u in units.split(",")] if units else list(spec.units)
    except ValueError:
        raise UserError(f"--units must be comma-separated integers, got {units!r}") from None
    settings = spec.settings if steps is None else replace(spec.settings, steps=steps)
    with run.lock():
        splits = load_spec(jobs[0].data)
        check_units(config_model(jobs[0].model, splits.train.num_classes), layer, unit_list, settings,
                    splits.train.image_size[0])
        device = resolve_device(cfg["device"])
        for job in jobs:
            if not job.paths.model.exists():
                click.echo(f"{job.arm} seed {seed}: not finished, skipped")
                continue
            path = featvis_stage(job, splits, device, layer, unit_list, settings)
            click.echo(f"{job.arm} seed {seed}: wrote {path}")
        path = build_report(run, summarize(run))
    click.echo(f"report: {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--layer", default=None, help="Layer (default and only choice: the run's SAE layer, sae.layer).")
@click.option("--arm", "arms", multiple=True, help="Only these arms (repeatable; default: every arm).")
@click.option("--seed", "seeds", type=int, multiple=True, help="Seeds (repeatable; default: the run's first seed).")
@click.option("--top", type=click.IntRange(1, 50), default=9, show_default=True, help="Exemplars per unit.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=0.1, show_default=True,
              help="Share of a latent's decoder energy on a neuron at which the latent loads on it.")
def browse(run_dir: str, layer: str | None, arms: tuple[str, ...], seeds: tuple[int, ...], top: int,
           threshold: float) -> None:
    """Feature pages: every neuron and SAE latent of each final model, as static HTML (browse/)."""
    from superlens.browse import browse_run

    pages = browse_run(run_dir, layer, arms, seeds or None, top, threshold, log=click.echo)
    if not pages:
        raise UserError(f"no finished job to browse in {run_dir}")
    click.echo(f"{len(pages)} pages in {Path(run_dir) / 'browse'}; report: {Path(run_dir) / 'report.html'}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, required=True)
@click.option("--arms", default=None, help="A,B: the two arms to diff (default: every AL arm against al-random).")
@click.option("--seed", "seeds", type=int, multiple=True, help="Seeds (repeatable; default: every seed).")
@click.option("--layer", "--layers", "layer", default=None,
              help="Layer (a run: its SAE layer; two models: required, the module name).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Crosscoder training steps (default 3000).")
@click.option("--k", type=click.IntRange(min=1), default=None,
              help="Active latents per pair (default 4); keep it near the layer's sparsity (docs/browse.md).")
@click.option("--data", "data_name", default=None, help="Two models: the dataset whose training images are used.")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Two models: the dataset's folder.")
@click.option("--weights", multiple=True, help="Two models: a weight file per MODEL, in order.")
@click.option("--images", type=click.IntRange(min=2), default=None,
              help="Two models: training images the crosscoder sees (default 2000).")
@click.option("--trust-pickle", is_flag=True, help="Two models: allow weight files that hold pickled objects.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Two models: folder (default runs/diff). A run's diffs go into the run (RUN/diff, its report).")
def diff(args, arms, seeds, layer, steps, k, data_name, root, weights, images, trust_pickle, out) -> None:
    """Model diffing with a crosscoder: RUN_DIR [--arms A,B], or MODEL_A MODEL_B --data NAME --weights A B --layers L
    [key=value ...] (model.*, device, seed as for analyze)."""
    from superlens.outside import diff_two_models, split_args

    names, weights, overrides = split_args(args, weights)
    crosscoder = {key: v for key, v in (("steps", steps), ("k", k)) if v is not None}
    if len(names) == 1 and not data_name:
        if overrides:
            raise UserError(f"key=value options ({overrides[0]}) are for two models; a run keeps its own settings")
        two_model_only = {"--out": out, "--root": root, "--weights": weights or None, "--images": images,
                          "--trust-pickle": trust_pickle or None}
        given = [name for name, value in two_model_only.items() if value is not None]
        if given:
            raise UserError(f"{given[0]} is for diffing two models; a run's diffs are written into the run "
                            f"({Path(names[0]) / 'diff'}, {Path(names[0]) / 'browse'} and its report)")
        from superlens.browse import diff_run

        pair = [a for a in arms.split(",") if a] if arms else []
        written = diff_run(names[0], pair, seeds or None, layer, crosscoder, log=click.echo)
        if not written:
            raise UserError(f"no pair of finished jobs to diff in {names[0]}")
        click.echo(f"{len(written)} diffs; report: {Path(names[0]) / 'report.html'}")
        return
    if arms or seeds:
        raise UserError(f"{'--arms' if arms else '--seed'} is for diffing the arms of a run (superlens diff RUN_DIR "
                        "--arms A,B); two models are compared as given")
    diff_two_models(names, weights, overrides, data_name, root, layer, crosscoder, images or 2000, trust_pickle, out,
                    click.echo)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, required=True)
@click.option("--data", "data_name", default=None, help="Dataset to analyse on: digits, cifar10, tinyimagenet, imagefolder:<path>, ...")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Folder holding the dataset or its archive.")
@click.option("--weights", multiple=True, help="Per MODEL, in order: a state-dict file (.pt, .pth, .safetensors), or "
              "pretrained[:NAME] for torchvision/timm weights downloaded by name.")
@click.option("--layers", default=None, help="Comma-separated module names (default: layer4 for resnet18). See --list-layers.")
@click.option("--units", default=None, help="Comma-separated channels of conv layers to visualize (activation maximization).")
@click.option("--labels", default=None, help="Comma-separated names of the models in the report (default: from --weights).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory (default: runs/analyze).")
@click.option("--list-layers", is_flag=True, help="Print every module name with its output shape for one input, then stop.")
@click.option("--browse", "pages", is_flag=True, help="Also write a feature page per model and layer (browse/).")
@click.option("--trust-pickle", is_flag=True, help="Allow weight files that hold pickled objects (runs code from the file).")
@click.option("--strict", type=click.BOOL, default=True, show_default=True, help="Refuse weights whose keys or shapes do not match.")
@click.option("--input-size", type=click.IntRange(min=1), default=None,
              help="Resize inputs to this many pixels (default: the dataset's size).")
@click.option("--pixels", type=click.Choice(["dataset", "unit", "raw"]), default="dataset", show_default=True,
              help="What the model was trained on: 'dataset' (0..1 pixels normalized with the dataset's mean/std), "
                   "'unit' (0..1 pixels, no normalization) or 'raw' (0..255 pixels). --mean/--std are on that scale.")
@click.option("--mean", default=None, help="Normalization mean: 1 or 3 comma-separated numbers, on the --pixels scale.")
@click.option("--std", default=None, help="Normalization std: 1 or 3 comma-separated positive numbers, on the --pixels scale.")
def analyze(args, data_name, root, weights, layers, units, labels, out, list_layers, pages, trust_pickle, strict,
            input_size, pixels, mean, std) -> None:
    """The superposition lens on trained models: MODEL [MODEL ...] [key=value ...].

    MODEL is resnet18, torchvision:<name>, timm:<name>, path/to/file.py:function or
    package.module:function. key=value options: device, seed, model.stem/width (resnet18),
    analysis.*, sae.*, featvis.* (see docs/analyze.md).
    """
    from superlens.analysis.features import list_layers as layer_table
    from superlens.lens import analyze as run_lens, options_from
    from superlens.outside import load_data, load_models, normalization as pixel_normalization, split_args

    specs, weights, overrides = split_args(args, weights)
    options = options_from(overrides)
    if not specs:
        raise UserError("name at least one MODEL (resnet18, torchvision:<name>, timm:<name>, file.py:function)")
    if weights and len(weights) != len(specs):
        raise UserError(f"give one --weights per MODEL: {len(specs)} models but {len(weights)} weight files")
    normalization = pixel_normalization(pixels, mean, std)
    splits = load_data(data_name, root, options, normalization) if data_name else None
    if splits is None and not list_layers:
        raise UserError("--data is required (e.g. --data cifar10 --root /path/to/data)")
    models = load_models(specs, weights, splits, options, trust_pickle, strict, click.echo)
    if list_layers:
        _print_layers(models[0], input_size or (splits.train.image_size[0] if splits else None), layer_table)
        return
    layer_list = [l for l in (layers or "").split(",") if l] or (["layer4"] if specs[0] == "resnet18" else [])
    if not layer_list:
        raise UserError("name the layers to analyse with --layers (see --list-layers for their names)")
    try:
        unit_list = [int(u) for u in units.split(",")] if units else []
    except ValueError:
        raise UserError(f"--units must be comma-separated integers, got {units!r}") from None
    out = out or "runs/analyze"
    names = labels.split(",") if labels else (None if weights else [spec.rsplit(":", 1)[-1] for spec in specs])
    summary = run_lens(models, splits, layer_list, weights=list(weights) or None, labels=names, units=unit_list, out=out,
                       options=options, input_size=input_size, progress=click.echo,
                       normalization=normalization["words"], browse=pages)
    for label, entry in summary["arms"].items():
        acc = entry.get("test_accuracy")
        click.echo(f"{label}: test accuracy {'n/a' if acc is None else f'{acc:.4f}'}")
    click.echo(f"report: {out}/report.html")


def _print_layers(model, side: int | None, layer_table) -> None:
    """--list-layers: every module with its output shape for one input of ``side`` pixels (or 224, else 32)."""
    import torch

    sizes = [side] if side else [224, 32]
    for i, size in enumerate(sizes):
        try:
            rows = layer_table(model, torch.zeros(1, 3, size, size))
            break
        except RuntimeError as exc:
            if i + 1 < len(sizes):
                continue
            raise UserError(f"the model cannot run on a {size}x{size} input ({describe(exc, 120)}); give the size it "
                            "was trained at with --input-size N (or --data NAME)") from None
    if not side and size != 224:
        click.echo(f"note: shapes for a {size}x{size} input (the model does not take 224x224)")
    for name, kind, shape in rows:
        click.echo(f"{name:<40} {kind:<22} {'x'.join(str(d) for d in shape[1:])}")


@cli.command()
def presets() -> None:
    """List the built-in presets."""
    from importlib import resources

    from superlens.config import preset_names

    for name in preset_names():
        text = resources.files("superlens.presets").joinpath(f"{name}.yaml").read_text()
        first = next((line[2:] for line in text.splitlines() if line.startswith("# ")), "")
        click.echo(f"{name:<24} {first}")


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="superlens", standalone_mode=False)
    except UserError as exc:
        print(f"superlens: error: {exc}", file=sys.stderr)
        return 2
    except click.UsageError as exc:  # a bad flag or value: one line, like any user error
        print(f"superlens: error: {exc.format_message()} (see `superlens {exc.ctx.info_name if exc.ctx else ''} --help`)"
              .replace("  --help", " --help"), file=sys.stderr)
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        print("superlens: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from superlens.study import JobsFailed

        if not isinstance(exc, JobsFailed):
            raise
        for failure in exc.failures:
            print(f"superlens: job {failure.job} failed: {failure.error}", file=sys.stderr)
        print(f"superlens: the others finished; tracebacks are in error.txt of each failed job's folder; fix the cause "
              f"and run `superlens resume {exc.run_dir}`", file=sys.stderr)
        return 1
    return 0
