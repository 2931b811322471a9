"""``report.html`` of ``superlens analyze``: the models side by side, one section per layer."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any


from superlens.report import figures
from superlens.report.html import HIST_TITLES, UNIT_TITLES, _b64, _fmt
from superlens.report.metrics import METRIC_DOCS, QUALITY_DOCS, SAE_DOCS, SUPERPOSITION_DOCS, planted_docs


def _rows(results, layer: str, docs: dict[str, str]) -> list[dict[str, Any]]:
    keys = [k for k in docs if any(k in r.layers[layer].metrics for r in results)]
    return [{"key": k, "doc": docs[k], "cells": [_fmt(r.layers[layer].metrics.get(k)) if k in r.layers[layer].metrics
                                                  else "–" for r in results]} for k in keys]


def build_lens_report(out: Path, results, summary: dict[str, Any], layers: list[str], classes: list[str]) -> Path:
    from jinja2 import Environment, PackageLoader, select_autoescape
    from markupsafe import Markup

    from superlens.fileio import write_text

    sections = []
    main_docs = {k: v for k, v in {**QUALITY_DOCS, **METRIC_DOCS}.items()
                 if k not in ("test_accuracy", "aubc", "label_efficiency") and not k.endswith("_area")}
    planted = planted_docs({k for r in results for lr in r.layers.values() for k in lr.metrics})
    sae_docs = {**SUPERPOSITION_DOCS, **planted, **SAE_DOCS}
    for layer in layers:
        shown = [r for r in results if r.layers[layer].metrics]
        section: dict[str, Any] = {"layer": layer, "shape": "x".join(str(d) for d in results[0].layers[layer].shape),
                                   "main": _rows(shown, layer, main_docs) if shown else [],
                                   "sae": _rows(shown, layer, sae_docs) if shown else [], "labels": [r.label for r in shown]}
        panels = [(r.label, r.layers[layer].tsne, r.layers[layer].labels) for r in shown if r.layers[layer].tsne is not None]
        section["tsne"] = _b64(figures.tsne_panels(panels, classes)) if panels else None
        views = {v: {r.label: r.layers[layer].histograms[v] for r in shown if v in r.layers[layer].histograms}
                 for v in HIST_TITLES}
        views = {v: per for v, per in views.items() if per}
        section["cosine"] = _b64(figures.histogram_overlays(views, HIST_TITLES)) if views else None
        units = {m: {r.label: r.layers[layer].per_unit[m] for r in shown if m in r.layers[layer].per_unit} for m in UNIT_TITLES}
        units = {m: per for m, per in units.items() if per}
        section["neurons"] = _b64(figures.distributions(units, UNIT_TITLES)) if units else None
        grids = []
        for r in shown:
            fv = r.layers[layer].featvis
            if fv is not None:
                grids.append(Markup(f'<img src="data:image/png;base64,{_b64(figures.featvis_grid(fv, classes, f"{r.label}, {layer}"))}" '
                                    f'alt="activation maximization, {r.label}">'))
        section["featvis"] = grids
        section["pages"] = [(r.label, f"browse/{r.label.replace('/', '_')}-{layer}.html") for r in results
                            if (out / "browse" / f"{r.label.replace('/', '_')}-{layer}.html").exists()]
        sections.append(section)
    notes = [n for r in results for n in r.notes + [n for lr in r.layers.values() for n in lr.notes]]
    env = Environment(loader=PackageLoader("superlens.report", "templates"), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("lens.html.j2").render(
        run_dir=str(out), generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), summary=summary,
        labels=[r.label for r in results], accuracy=[_fmt(r.accuracy) if r.accuracy is not None else "n/a" for r in results],
        sections=sections, notes=notes, n_classes=len(classes),
    )
    path = out / "report.html"
    write_text(path, html)
    return path
