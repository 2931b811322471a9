"""The ``superlens`` command line. User mistakes end with one line on stderr and exit 2."""

from __future__ import annotations

import sys

import click

from superlens.errors import UserError


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


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="superlens", standalone_mode=False)
    except UserError as exc:
        print(f"superlens: error: {exc}", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        print("superlens: interrupted", file=sys.stderr)
        return 130
    return 0
