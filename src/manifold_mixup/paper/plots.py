"""Figures of the paper, one function per figure.

Every function draws on its own ``matplotlib.figure.Figure`` with the Agg canvas and writes
a PNG; nothing touches pyplot's global state, so the functions are safe in worker processes
and tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib import colormaps

from ..checks import as_generator
from .constants import FIGURE2_SEED
from .toy import GaussianMixtureProblem

__all__ = ["class_colours", "plot_toy_problem", "figure2", "plot_alpha_trajectories", "plot_excess_by_quartile",
           "plot_difference_over_epochs", "plot_decision_grid"]


def class_colours(num_classes: int) -> tuple[list, list]:
    """(dark, light) RGBA colours for each class: tab20 pairs for K <= 10, else hsv."""
    if num_classes <= 10:
        cmap = colormaps["tab20"]
        return [cmap(2 * k) for k in range(num_classes)], [cmap(2 * k + 1) for k in range(num_classes)]
    cmap = colormaps["hsv"]
    dark = [cmap(k / num_classes) for k in range(num_classes)]
    light = [tuple(0.6 + 0.4 * np.asarray(c[:3])) + (1.0,) for c in dark]
    return dark, light


def _save(fig: Figure, path: "str | os.PathLike", dpi: int) -> Path:
    """Render to memory, then write atomically (a killed run never leaves a half-written PNG)."""
    import io

    from .files import write_atomic

    path = Path(path)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    write_atomic(path, buf.getvalue())
    return path


def plot_toy_problem(
    problem: GaussianMixtureProblem,
    n_samples: int,
    generator: "torch.Generator | int",
    path: "str | os.PathLike",
    title: "str | None" = None,
    *,
    resolution: int = 400,
    dpi: int = 150,
) -> Path:
    """Figure 2: samples coloured by class over the filled Bayes decision regions.

    Args:
        problem: the toy problem.
        n_samples: number of points drawn with ``problem.sample`` (>= 1).
        generator: torch.Generator or int seed for the samples.
        path: PNG file to write (parent folders are created).
        title: figure title; default names K, N, sigma and the Bayes risk.
        resolution: pixels along each axis of the decision-region image (>= 16).
        dpi: PNG resolution.
    Returns: the path written.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 16:
        raise ValueError(f"resolution must be an int >= 16, got {resolution!r}")
    x, y = problem.sample(n_samples, as_generator(generator))
    k = problem.num_classes
    mu = problem.means.reshape(-1, 2)
    pad = 3.0 * problem.sigma
    lo = torch.minimum(mu.min(0).values - pad, x.double().min(0).values)
    hi = torch.maximum(mu.max(0).values + pad, x.double().max(0).values)
    gx = torch.linspace(float(lo[0]), float(hi[0]), resolution, dtype=torch.float64)
    gy = torch.linspace(float(lo[1]), float(hi[1]), resolution, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).reshape(-1, 2)
    regions = problem.bayes_predict(pts).reshape(resolution, resolution).numpy()

    dark, light = class_colours(k)
    fig = Figure(figsize=(6.0, 5.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(
        regions,
        origin="lower",
        extent=(float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])),
        cmap=ListedColormap(light),
        vmin=-0.5,
        vmax=k - 0.5,
        interpolation="nearest",
        aspect="equal",
    )
    ax.contour(gx.numpy(), gy.numpy(), regions, levels=np.arange(k - 1) + 0.5, colors="k", linewidths=0.6)
    xn, yn = x.numpy(), y.numpy()
    for c in range(k):
        sel = yn == c
        ax.scatter(xn[sel, 0], xn[sel, 1], s=9, color=dark[c], edgecolors="k", linewidths=0.2, label=f"class {c}", zorder=3)
    means = problem.means.numpy()
    for c in range(k):
        ax.scatter(means[c, :, 0], means[c, :, 1], marker="X", s=60, color=dark[c], edgecolors="k", linewidths=0.8, zorder=4)
    ax.scatter([], [], marker="X", s=60, color="w", edgecolors="k", linewidths=0.8, label="component means")
    if title is None:
        title = (
            f"Toy problem: K = {k}, N = {problem.components_per_class}, "
            f"sigma = {problem.sigma:.2f}, Bayes risk = {100 * problem.bayes_risk():.1f}%"
        )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_xlim(float(lo[0]), float(hi[0]))
    ax.set_ylim(float(lo[1]), float(hi[1]))
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85, markerscale=1.2)
    fig.tight_layout()
    return _save(fig, path, dpi)


def figure2(out_path: "str | os.PathLike" = "docs/figure2.png", seed: int = FIGURE2_SEED, n_samples: int = 1000) -> Path:
    """The paper's Figure 2: one problem with K = 3, N = 5 (default ranges) drawn from
    ``seed``, with ``n_samples`` samples (seed + 1 for the samples). Returns the path."""
    problem = GaussianMixtureProblem.random(3, 5, seed)
    return plot_toy_problem(problem, n_samples, seed + 1, out_path)


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    """A matplotlib Figure on the Agg canvas (no global pyplot state)."""
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_alpha_trajectories(rows: list[dict], path) -> None:
    """Mean alpha and mixing strength (mean min(lambda, 1 - lambda)) per epoch, averaged over
    seeds, for the ConfMix and ramp methods.

    rows: study rows with ``method`` and ``policy`` (a list of {epoch, mean_alpha, mean_partner_weight}).
    """
    fig, axes = _figure(1, 2, (11.0, 4.0))
    methods = sorted({r["method"] for r in rows if any(k in r["method"] for k in ("confmix", "ramp"))})
    for m in methods:
        hist = [r["policy"] for r in rows if r["method"] == m and r.get("policy")]
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist[0]]
        for ax, key in zip(axes[0], ("mean_alpha", "mean_partner_weight")):
            vals = np.array([[h[key] for h in run] for run in hist if len(run) == len(epochs)])
            style = "-" if m.startswith("manifold") else "--"
            ax.plot(epochs, vals.mean(0), style, label=m)
    for ax, title in zip(axes[0], ("mean alpha per epoch", "mixing strength: mean min(lambda, 1 - lambda)")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("alpha")
    axes[0][1].set_ylabel("weight of the partner row")
    if methods:  # an ERM-only study has no trajectory to label
        axes[0][1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path, 150)


def plot_excess_by_quartile(table: dict, path, paper_label: str = "") -> None:
    """Figure 3: mean excess risk per normalised-MMLB quartile, one line per method, with intervals.

    table: {method: [(quartile label, mean, low, high), ...]}.
    """
    fig, axes = _figure(1, 1, (7.0, 4.5))
    ax = axes[0][0]
    n = len(table)
    for j, (method, points) in enumerate(table.items()):
        xs = [i + (j - (n - 1) / 2) * 0.08 for i in range(len(points))]
        means = [p[1] for p in points]
        err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=method)
    labels = [p[0] for p in next(iter(table.values()))]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("normalised MMLB quartile")
    ax.set_ylabel("excess risk (percentage points)")
    ax.set_title("Excess risk against normalised MMLB quartile" + (f" ({paper_label})" if paper_label else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, 150)


def plot_difference_over_epochs(curves: dict, path) -> None:
    """Excess risk minus the baseline's (pp) against the training epoch, one line per mixing depth,
    with 95% paired intervals as error bars; a dashed line at 0 (below it mixing has the lower risk).

    curves: {method label: [(epoch, mean, low, high), ...]} (the depth study's ``difference_over_epochs``).
    """
    fig, axes = _figure(1, 1, (7.0, 4.5))
    ax = axes[0][0]
    n = len(curves)
    epochs = sorted({p[0] for pts in curves.values() for p in pts})
    log = len(epochs) > 1 and epochs[-1] >= 4 * epochs[0]
    for j, (label, pts) in enumerate(curves.items()):
        shift = 1.0 + (j - (n - 1) / 2) * 0.025  # small horizontal offsets so the bars do not overlap
        xs = [p[0] * shift if log else p[0] + (j - (n - 1) / 2) * 0.1 for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(xs, [p[1] for p in pts], yerr=err, marker="o", capsize=3, label=label)
    ax.axhline(0.0, color="k", linestyle="--", linewidth=0.8)
    if log:
        ax.set_xscale("log")
    ax.set_xticks(epochs, [str(e) for e in epochs])
    ax.minorticks_off()
    ax.set_xlabel("epochs trained")
    ax.set_ylabel("excess risk minus baseline's (pp)")
    ax.set_title("Mixing against ERM over training (95% paired intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, 150)


def plot_decision_grid(panels: list[tuple[str, object, object]], x, y, extent, path) -> None:
    """Figure 1: decision regions of several models, one panel each, with the training points.

    panels: (title, xx [R, R] grid coordinates unused, labels [R, R]) tuples; x [n, 2], y [n];
    extent: (xmin, xmax, ymin, ymax) of the label grids.
    """
    n = len(panels)
    fig, axes = _figure(1, n, (3.2 * n, 3.9))
    for ax, (title, _, labels) in zip(axes[0], panels):
        ax.imshow(np.asarray(labels), origin="lower", extent=extent, cmap="coolwarm", alpha=0.35, aspect="equal",
                  interpolation="nearest")
        ax.scatter(np.asarray(x)[:, 0], np.asarray(x)[:, 1], c=np.asarray(y), cmap="coolwarm", s=4, edgecolors="none")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path, 150)
