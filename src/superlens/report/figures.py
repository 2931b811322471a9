"""Figures of a run, each returned as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from superlens.analysis.stats import metric_bounds, t_interval  # noqa: E402

ARM_COLORS = plt.get_cmap("tab10").colors


def class_colors(n: int) -> list:
    """n distinct colours: tab10 up to 10 classes, tab20 up to 20, evenly spaced hues beyond."""
    if n <= 10:
        return list(plt.get_cmap("tab10").colors[:n])
    if n <= 20:
        return list(plt.get_cmap("tab20").colors[:n])
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def b64(png: bytes) -> str:
    """PNG bytes as the base64 text an HTML data URL embeds."""
    return base64.b64encode(png).decode("ascii")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def accuracy_curves(rows: list[dict[str, Any]], arms: list[str]) -> bytes:
    """Test accuracy against labelled images: mean over seeds with a 95% t-interval band per arm."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, arm in enumerate(arms):
        color = ARM_COLORS[i % 10]
        mine = [r for r in rows if r["arm"] == arm]
        if arm == "baseline":
            acc = [r["test_accuracy"] for r in mine]
            lo, hi = t_interval(acc, bounds=metric_bounds("test_accuracy"))
            ax.axhline(np.mean(acc), color=color, ls="--", label=f"baseline ({mine[0]['n_labeled']} labels)")
            ax.axhspan(lo, hi, color=color, alpha=0.15)
            continue
        _budget_curve(ax, mine, "test_accuracy", color, arm)
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _budget_curve(ax, rows: list[dict[str, Any]], key: str, color, label: str) -> None:
    """Mean of ``key`` over seeds against labelled images, round by round, with a 95% t-interval band."""
    rounds = sorted({r["round"] for r in rows})
    n = [np.mean([r["n_labeled"] for r in rows if r["round"] == k]) for k in rounds]
    values = [[r[key] for r in rows if r["round"] == k and r.get(key) is not None] for k in rounds]
    cis = np.array([t_interval(v, bounds=metric_bounds(key)) for v in values])
    ax.plot(n, [np.mean(v) for v in values], "o-", color=color, label=label, ms=4)
    ax.fill_between(n, cis[:, 0], cis[:, 1], color=color, alpha=0.2)


def tsne_panels(panels: list[tuple[str, np.ndarray, np.ndarray]], classes: list[str]) -> bytes:
    """One t-SNE scatter per (title, coords, labels), every class in its own colour."""
    colors = class_colors(len(classes))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (title, coords, labels) in zip(axes[0], panels):
        point_colors = np.array(colors)[labels]
        ax.scatter(coords[:, 0], coords[:, 1], c=point_colors, s=4 if len(coords) > 2000 else 8, linewidths=0)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(classes) <= 20:
        handles = [plt.Line2D([], [], marker="o", ls="", color=colors[i], label=c) for i, c in enumerate(classes)]
        fig.legend(handles=handles, loc="lower center", ncol=min(10, len(classes)), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.08))
    return _png(fig)


def histogram_overlays(views: dict[str, dict[str, np.ndarray]], titles: dict[str, str], lo: float = -1.0, hi: float = 1.0) -> bytes:
    """One panel per view; in each, every arm's histogram (mean over seeds) as a density line."""
    fig, axes = plt.subplots(1, len(views), figsize=(4.2 * len(views), 3.4), squeeze=False)
    for ax, (view, per_arm) in zip(axes[0], views.items()):
        for i, (arm, counts) in enumerate(per_arm.items()):
            counts = np.asarray(counts, dtype=float)
            edges = np.linspace(lo, hi, len(counts) + 1)
            density = counts / max(counts.sum(), 1) / np.diff(edges)
            ax.stairs(density, edges, color=ARM_COLORS[i % 10], label=arm, lw=1.3)
        ax.set_title(titles.get(view, view), fontsize=10)
        ax.set_xlabel("cosine similarity" if "correlation" not in view else "correlation")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("density")
    axes[0][-1].legend(fontsize=8)
    return _png(fig)


def distributions(metrics: dict[str, dict[str, np.ndarray]], titles: dict[str, str]) -> bytes:
    """One panel per per-unit metric; each arm's values pooled over seeds as a step histogram."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, (metric, per_arm) in zip(axes[0], metrics.items()):
        every = np.concatenate([np.asarray(v, float) for v in per_arm.values()])
        if np.issubdtype(every.dtype, np.integer) or np.allclose(every, np.round(every)):
            bins = np.arange(every.min() - 0.5, every.max() + 1.5)
        else:
            bins = np.linspace(every.min(), every.max() + 1e-9, 30)
        for i, (arm, values) in enumerate(per_arm.items()):
            ax.hist(values, bins=bins, density=True, histtype="step", lw=1.3, color=ARM_COLORS[i % 10], label=arm)
        ax.set_title(titles.get(metric, metric), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("density of units")
    axes[0][-1].legend(fontsize=8)
    return _png(fig)


def query_histograms(per_arm: dict[str, np.ndarray], classes: list[str]) -> bytes:
    """Per active-learning arm, a rounds x classes heat map of queried images (summed over seeds)."""
    width = max(4.0, 0.3 * min(len(classes), 40)) + 1.2
    fig, axes = plt.subplots(1, len(per_arm), figsize=(width * len(per_arm), 3.2), squeeze=False, layout="constrained")
    for ax, (arm, counts) in zip(axes[0], per_arm.items()):
        im = ax.imshow(counts, aspect="auto", cmap="viridis")
        ax.set_title(arm, fontsize=10)
        ax.set_ylabel("round")
        ax.set_yticks(range(len(counts)), [str(r + 1) for r in range(len(counts))])
        if len(classes) <= 20:
            ax.set_xticks(range(len(classes)), classes, rotation=60, fontsize=7)
        else:
            ax.set_xlabel("class")
        fig.colorbar(im, ax=ax, label="images")
    return _png(fig)


def featvis_grid(fv: dict[str, np.ndarray], classes: list[str], title: str) -> bytes:
    """Rows are units: the optimized image(s), then the most activating training images with their classes."""
    images, ex_images, labels = fv["images"], fv["exemplar_images"], fv["exemplar_labels"]
    units, k = images.shape[:2]
    top = ex_images.shape[1]
    cols = k + top
    fig, axes = plt.subplots(units, cols, figsize=(0.95 * cols + 0.9, 1.05 * units + 0.5), squeeze=False)
    for r in range(units):
        row = [images[r, j] for j in range(k)] + [ex_images[r, j] for j in range(top)]
        for c, img in enumerate(row):
            ax = axes[r][c]
            ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= k:
                name = classes[int(labels[r, c - k])] if classes else str(int(labels[r, c - k]))
                ax.set_title(name[:12], fontsize=6, pad=2)
            else:
                for spine in ax.spines.values():
                    spine.set_edgecolor("#c00")
                    spine.set_linewidth(1.5)
        axes[r][0].set_ylabel(f"unit {int(fv['units'][r])}", fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.35)
    return _png(fig)


def toy_sweep(lab: dict[str, Any]) -> bytes:
    """Feature norms and dimensionalities of the n x m toy model at each sparsity."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), layout="constrained")
    cmap = plt.get_cmap("viridis")
    runs = lab["sweep"]
    for i, run in enumerate(runs):
        color = cmap(i / max(1, len(runs) - 1))
        label = f"S={run['sparsity']:g} ({run['represented']} represented)"
        axes[0].plot(run["norms"], "o-", color=color, ms=3, label=label)
        axes[1].plot(run["dimensionality"], "o-", color=color, ms=3)
    axes[0].set_title("||W_i|| by feature (importance falls to the right)", fontsize=9)
    axes[1].set_title("dimensionality D_i", fontsize=9)
    for ax in axes:
        ax.set_xlabel("feature i")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _png(fig)


def toy_phase(lab: dict[str, Any]) -> bytes:
    """Outcome for the second of two features sharing one dimension."""
    from matplotlib.colors import ListedColormap

    phase = lab["phase"]
    grid = np.asarray(phase["outcome"])
    fig, ax = plt.subplots(figsize=(4.2, 3.4), layout="constrained")
    cmap = ListedColormap(["#d9d9d9", "#4c72b0", "#dd8452"])
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, origin="lower", aspect="auto")
    ax.set_xticks(range(len(phase["importance"])), [f"{v:.2g}" for v in phase["importance"]], fontsize=7)
    ax.set_yticks(range(len(phase["sparsity"])), [f"{v:.2f}" for v in phase["sparsity"]], fontsize=7)
    ax.set_xlabel("relative importance of feature 2")
    ax.set_ylabel("sparsity S")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(3)]
    ax.legend(handles, ["not represented", "dedicated", "superposition"], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1))
    return _png(fig)


def toy_memorisation(curve: dict[str, Any]) -> bytes:
    """Dimensions given to training points and to features against the number of training points."""
    fig, ax = plt.subplots(figsize=(5.6, 3.4), layout="constrained")
    rows = curve["rows"]
    for arm, style in (("random", "-"), ("uncertainty", "--")):
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["size"])
        sizes = sorted({r["size"] for r in mine})
        for key, color, label in (("point_dims_top", "#dd8452", "data points"), ("feature_dims_top", "#4c72b0", "features")):
            values = [np.mean([r[key] for r in mine if r["size"] == t]) for t in sizes]
            ax.plot(sizes, values, style, marker="o", ms=3, color=color, label=f"{label}, {arm} data")
    ax.set_xscale("log")
    ax.set_xlabel("training points")
    ax.set_ylabel(f"dimensions held by the top {curve['settings']['m']}")
    ax.set_title(f"n={curve['settings']['n']} features in m={curve['settings']['m']} dimensions", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def psi_per_round(per_arm: dict[str, list[list[dict[str, Any]]]]) -> bytes:
    """psi of each round's model against labelled images; mean over seeds with a 95% band."""
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for i, (arm, seeds) in enumerate(per_arm.items()):
        _budget_curve(ax, [r for runs in seeds for r in runs], "psi", ARM_COLORS[(i + 1) % 10], arm)
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("psi = F / N")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def round_metric_curves(rows: list[dict[str, Any]], arms: list[str], metrics: list[str], reference: str = "al-random") -> bytes:
    """Top row: each metric against labelled images per AL arm (mean, 95% t band over seeds).
    Bottom row (when ``reference`` ran): each arm minus ``reference`` at the same round,
    paired by seed, with its 95% t band; the dashed line is no difference."""
    al = [a for a in arms if a != "baseline"]
    paired = reference in al and len(al) > 1
    fig, axes = plt.subplots(2 if paired else 1, len(metrics), figsize=(3.6 * len(metrics), 6.2 if paired else 3.3),
                             squeeze=False)
    for j, metric in enumerate(metrics):
        ax = axes[0][j]
        for i, arm in enumerate(arms):
            if arm == "baseline":
                continue
            _budget_curve(ax, [r for r in rows if r["arm"] == arm], metric, ARM_COLORS[i % 10], arm)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
        if paired:
            ax = axes[1][j]
            ref = {(r["seed"], r["round"]): r.get(metric) for r in rows if r["arm"] == reference}
            for i, arm in enumerate(arms):
                if arm in ("baseline", reference):
                    continue
                diffs = [{**r, metric: r[metric] - ref[(r["seed"], r["round"])]} for r in rows
                         if r["arm"] == arm and r.get(metric) is not None and ref.get((r["seed"], r["round"])) is not None]
                if diffs:
                    _budget_curve(ax, diffs, metric, ARM_COLORS[i % 10], f"{arm} - {reference}")
            ax.axhline(0, color="k", ls="--", lw=0.8)
            ax.set_title(f"{metric}: minus {reference}", fontsize=9)
            ax.set_xlabel("labelled training images")
            ax.grid(alpha=0.3)
        else:
            ax.set_xlabel("labelled training images")
    axes[0][-1].legend(fontsize=7)
    if paired:
        axes[1][-1].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
