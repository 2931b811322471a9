"""Feature pages: one self-contained HTML file per model and layer (or per crosscoder diff).

The page holds its data as JSON and its images as one embedded sprite; vanilla JS draws
the sortable, filterable table of units and, for the unit clicked, its card. No server, no
network: it opens from the file system.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from superlens.fileio import write_text

THUMB = 48  # largest thumbnail side kept in the sprite, in pixels
SHOWN = 64  # thumbnail side on the page

UNIT_COLUMNS = [
    {"key": "id", "label": "unit", "type": "text"},
    {"key": "kind", "label": "kind", "type": "text"},
    {"key": "density", "label": "density", "type": "num", "help": "fraction of images on which the unit is active"},
    {"key": "mean", "label": "mean act.", "type": "num", "digits": 4},
    {"key": "class_selectivity", "label": "class sel.", "type": "num",
     "help": "(mu_max - mu_rest) / (mu_max + mu_rest) over class means (Morcos et al. 2018)"},
    {"key": "top_class", "label": "top class", "type": "text"},
    {"key": "links", "label": "links", "type": "num", "digits": 0,
     "help": "a neuron: live latents that load on it (its polysemanticity); a latent: neurons it loads on"},
]


def sprite(images: np.ndarray) -> dict[str, Any]:
    """(n, 3, h, w) uint8 images as one image grid (thumbnails of at most THUMB px) and its geometry: a
    JPEG (quality 90) when the thumbnail side is a multiple of 8, else a PNG."""
    from PIL import Image

    n = max(1, len(images))
    cols = min(n, 32)
    rows = math.ceil(n / cols)
    h, w = images.shape[2:] if len(images) else (THUMB, THUMB)
    side = min(THUMB, max(h, w))
    sheet = Image.new("RGB", (cols * side, rows * side), (255, 255, 255))
    for i, img in enumerate(images):
        tile = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
        if tile.size != (side, side):
            tile = tile.resize((side, side), Image.BILINEAR)
        sheet.paste(tile, ((i % cols) * side, (i // cols) * side))
    buf = io.BytesIO()
    if side % 8 == 0:  # JPEG blocks (8 px, no chroma subsampling) then never straddle two thumbnails
        sheet.save(buf, format="JPEG", quality=90, subsampling=0)
        kind = "jpeg"
    else:
        sheet.save(buf, format="PNG", optimize=True)
        kind = "png"
    return {"uri": f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode("ascii"), "cols": cols,
            "rows": rows}


def png_uri(image: np.ndarray) -> str:
    """A (3, h, w) uint8 image as a PNG data URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_page(path: Path, title: str, facts: Sequence[tuple[str, str]], note: str, content: dict[str, Any],
               images: np.ndarray, labels: np.ndarray, classes: Sequence[str], present: np.ndarray,
               columns: list[dict] | None = None, sort: tuple[str, int] = ("links", -1),
               link_titles: dict[str, str] | None = None, featvis: list[str] | None = None,
               opened: str | None = None) -> Path:
    """One feature page at ``path``. ``content`` is ``analysis.pages``' result; ``images``/``labels``
    the dataset rows of its ``images`` slots; ``present`` the class labels its ``top_classes`` counts
    are over; ``featvis`` PNG data URIs that units' ``featvis`` fields index."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    data = {"units": content["units"], "columns": columns or UNIT_COLUMNS, "sort": list(sort),
            "map_names": content["map_names"], "map_shape": content["map_shape"], "classes": list(classes),
            "present_classes": [int(c) for c in present], "image_labels": [int(y) for y in labels],
            "sprite": sprite(images), "size": SHOWN, "link_titles": link_titles or {}, "featvis": featvis or [],
            "open": opened}
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    env = Environment(loader=PackageLoader("superlens.report", "templates"), autoescape=select_autoescape(["html", "j2"]))
    kinds = sorted({u["kind"] for u in content["units"]})
    html = env.get_template("browse.html.j2").render(title=title, facts=facts, note=note, data=_Safe(text),
                                                     size=SHOWN, kinds=kinds)
    write_text(path, html)
    return Path(path)


class _Safe(str):
    """Text Jinja inserts as it is (the page's JSON, already made safe for a script element)."""

    def __html__(self) -> str:
        return str(self)


def feature_sections(run, cfg: dict[str, Any], arms: list[str]) -> list[dict[str, Any]]:
    """The report's section on feature pages (links per arm and seed) and crosscoder diffs (counts per
    pair with t-intervals over seeds, links to their pages); none when neither was made."""
    from html import escape

    from markupsafe import Markup

    from superlens.analysis.stats import mean_ci
    from superlens.fileio import read_json

    links = []
    for arm in arms:
        pages = [(seed, run.browse_page(arm, seed, cfg["sae"]["layer"])) for seed in cfg["seeds"]]
        pages = [(seed, p) for seed, p in pages if p.exists()]
        if pages:
            links.append(f"<li>{escape(arm)}: " + ", ".join(
                f'<a href="{escape(str(p.relative_to(run.path)))}">seed {seed}</a>' for seed, p in pages) + "</li>")
    rows = []
    for folder in sorted(run.path.glob("diff/*-vs-*")):
        found = [read_json(f) for f in sorted(folder.glob("seed*/diff.json"))]
        if not found:
            continue
        a, b = found[0]["models"]
        cells = []
        for key in ("a_only", "b_only", "shared", "live"):
            m = mean_ci([d[key] for d in found])
            lo, hi = m["ci95"]
            interval = "" if lo is None or len(found) < 2 else f" [{lo:.1f}, {hi:.1f}]"
            cells.append(f"<td>{m['mean']:.1f}{interval}</td>")
        pages = ", ".join(f'<a href="{escape(str(run.diff_page(a, b, d["seed"], d["layer"]).relative_to(run.path)))}">'
                          f'seed {d["seed"]}</a>' for d in found if "seed" in d)
        rows.append(f"<tr><td>{escape(a)}</td><td>{escape(b)}</td><td>{len(found)}</td>{''.join(cells)}<td>{pages}</td></tr>")
    if not links and not rows:
        return []
    html = ""
    if links:
        html += ("<p>One page per final model at the SAE layer: every neuron and SAE latent, sortable, each with a card "
                 "(exemplars with heatmaps, histograms, the latents on a neuron).</p><ul>" + "".join(links) + "</ul>")
    if rows:
        html += ("<p>Crosscoder model diffing (docs/browse.md): latents only A writes into (A-only, relative decoder norm "
                 "r &lt; 0.1), only B (r &gt; 0.9), and shared ones (0.4 &le; r &le; 0.6); mean over seeds with a 95% "
                 "t-interval.</p><table><tr><th>A</th><th>B</th><th>seeds</th><th>A-only</th><th>B-only</th>"
                 "<th>shared</th><th>live latents</th><th>pages</th></tr>" + "".join(rows) + "</table>")
    else:
        html += "<p class=\"note\">No model diffs yet: <code>superlens diff RUN_DIR</code> diffs every AL arm against al-random.</p>"
    return [{"title": f"Feature pages and model diffs ({cfg['sae']['layer']})", "html": Markup(html)}]
